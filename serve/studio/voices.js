// Voices: store a reference (file or microphone) with its transcript and name (POST /v1/voices, multipart),
// list them with play and delete; the Speak section's voice picker follows the list.

import { api, apiJson, clearError, fieldError, setStatus, showError } from "./api.js";
import { decodeAudio, SAMPLE_RATE, wavBlob } from "./audio.js";

const FIELDS = { audio: "voice-file", transcript: "voice-transcript", name: "voice-name" };
let recorded = null; // the microphone's recording as a WAV File, used when no file is chosen
let playerUrl = null;

function label(voice) {
  return voice.name ? `${voice.name} (${voice.duration_s.toFixed(1)} s)` : voice.id;
}

function fillPicker(voices) {
  const picker = document.getElementById("speak-voice");
  const chosen = picker.value;
  picker.replaceChildren(
    ...voices.map((voice) => new Option(label(voice), voice.id, false, voice.id === chosen)),
  );
  if (!voices.length) picker.append(new Option("no stored voice yet: save one in Voices", ""));
}

function button(text, name, onClick) {
  const element = document.createElement("button");
  element.type = "button";
  element.textContent = text;
  element.setAttribute("aria-label", `${text} ${name}`);
  element.addEventListener("click", onClick);
  return element;
}

async function play(voice) {
  try {
    const blob = await (await api(`/v1/voices/${voice.id}/audio`)).blob();
    if (playerUrl) URL.revokeObjectURL(playerUrl);
    playerUrl = URL.createObjectURL(blob);
    const player = document.getElementById("voice-player");
    player.hidden = false;
    player.src = playerUrl;
    await player.play();
  } catch (error) {
    showError(error, {}, "voice-list");
  }
}

async function remove(voice) {
  try {
    await api(`/v1/voices/${voice.id}`, { method: "DELETE" });
    await loadVoices();
  } catch (error) {
    showError(error, {}, "voice-list");
  }
}

export async function loadVoices() {
  clearError("voice-list");
  try {
    const { voices } = await apiJson("/v1/voices");
    const list = document.getElementById("voice-list");
    list.replaceChildren(
      ...voices.map((voice) => {
        const item = document.createElement("li");
        const text = document.createElement("span");
        text.textContent = `${label(voice)}: “${voice.transcript}”`;
        const name = voice.name || voice.id;
        item.append(text, button("Play", name, () => play(voice)), button("Delete", name, () => remove(voice)));
        return item;
      }),
    );
    if (!voices.length) list.append(Object.assign(document.createElement("li"), { textContent: "No stored voice yet." }));
    fillPicker(voices);
  } catch (error) {
    showError(error, {}, "voice-list");
  }
}

async function save(event) {
  event.preventDefault();
  Object.values(FIELDS).forEach(clearError);
  clearError("voice");
  const file = document.getElementById("voice-file").files[0] || recorded;
  if (!file) {
    showError(fieldError("audio", "audio: choose a reference audio file or record one"), FIELDS, "voice");
    return;
  }
  const form = new FormData();
  form.append("audio", file, file.name);
  form.append("transcript", document.getElementById("voice-transcript").value);
  const name = document.getElementById("voice-name").value.trim();
  if (name) form.append("name", name);
  setStatus("voice-status", "Saving…");
  try {
    const voice = await apiJson("/v1/voices", { method: "POST", form });
    setStatus("voice-status", `Saved ${voice.name || voice.id}.`);
    await loadVoices();
    document.getElementById("speak-voice").value = voice.id;
  } catch (error) {
    setStatus("voice-status", "");
    showError(error, FIELDS, "voice");
  }
}

async function record() {
  const control = document.getElementById("voice-record");
  if (control.recorder) {
    control.recorder.stop();
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const recorder = new MediaRecorder(stream);
    const chunks = [];
    recorder.ondataavailable = (e) => chunks.push(e.data);
    recorder.onstop = async () => {
      stream.getTracks().forEach((t) => t.stop());
      control.recorder = null;
      control.textContent = "Record from microphone";
      // the browser's own format (webm/opus) becomes a WAV here, which every server reads
      const samples = await decodeAudio(new Blob(chunks, { type: recorder.mimeType }));
      recorded = new File([wavBlob(samples)], "microphone.wav", { type: "audio/wav" });
      const seconds = (samples.length / SAMPLE_RATE).toFixed(1);
      setStatus("voice-record-status", `Recorded ${seconds} s: it is saved when no file is chosen.`);
    };
    recorder.start();
    control.recorder = recorder;
    control.textContent = "Stop recording";
    setStatus("voice-record-status", "Recording…");
  } catch (error) {
    setStatus("voice-record-status", `The microphone is not available: ${error.message}`);
  }
}

export function initVoices() {
  document.getElementById("voice-form").addEventListener("submit", save);
  document.getElementById("voice-record").addEventListener("click", record);
}
