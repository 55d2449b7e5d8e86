// Edit: load a recording, see its waveform, select a span with the mouse (or type it), give the new text and
// regenerate that span (POST /v1/edit: audio base64, text, new_text, spans in seconds).

import { api, clearError, fieldError, setStatus, showError } from "./api.js";
import { base64Of, decodeAudio, drawWave, SAMPLE_RATE } from "./audio.js";

const FIELDS = { new_text: "edit-new-text", text: "edit-text", spans: "edit-spans", audio: "edit-file" };
let recording = null; // { file, samples }
let resultUrl = null;

function span() {
  return [Number(document.getElementById("edit-start").value), Number(document.getElementById("edit-end").value)];
}

function redraw() {
  if (recording) drawWave(document.getElementById("edit-wave"), recording.samples, span());
}

function setSpan(a, b) {
  const [start, end] = a <= b ? [a, b] : [b, a];
  document.getElementById("edit-start").value = start.toFixed(2);
  document.getElementById("edit-end").value = end.toFixed(2);
  redraw();
}

async function load() {
  clearError("edit-file");
  const file = document.getElementById("edit-file").files[0];
  if (!file) return;
  try {
    recording = { file, samples: await decodeAudio(file) };
    const seconds = recording.samples.length / SAMPLE_RATE;
    setSpan(seconds / 3, (2 * seconds) / 3);
    setStatus("edit-status", `${seconds.toFixed(2)} s loaded: drag over the waveform to choose the span.`);
  } catch (error) {
    recording = null;
    showError(fieldError("audio", `audio: this file cannot be decoded (${error.message})`), FIELDS, "edit");
  }
}

function selectWithMouse(canvas) {
  const seconds = (event) => {
    const box = canvas.getBoundingClientRect();
    const x = Math.min(Math.max(event.clientX - box.left, 0), box.width);
    return (x / box.width) * (recording.samples.length / SAMPLE_RATE);
  };
  let anchor = null;
  canvas.addEventListener("pointerdown", (event) => {
    if (!recording) return;
    anchor = seconds(event);
    canvas.setPointerCapture(event.pointerId);
  });
  canvas.addEventListener("pointermove", (event) => anchor !== null && setSpan(anchor, seconds(event)));
  canvas.addEventListener("pointerup", (event) => {
    if (anchor !== null) setSpan(anchor, seconds(event));
    anchor = null;
  });
}

async function regenerate(event) {
  event.preventDefault();
  Object.values(FIELDS).forEach(clearError);
  clearError("edit");
  if (!recording) {
    showError(fieldError("audio", "audio: load a recording first"), FIELDS, "edit");
    return;
  }
  const button = document.getElementById("edit-button");
  button.disabled = true;
  setStatus("edit-status", "Regenerating…");
  try {
    const body = {
      audio: await base64Of(recording.file),
      text: document.getElementById("edit-text").value,
      new_text: document.getElementById("edit-new-text").value,
      spans: [span()],
      response_format: "wav",
    };
    const blob = await (await api("/v1/edit", { method: "POST", json: body })).blob();
    if (resultUrl) URL.revokeObjectURL(resultUrl);
    resultUrl = URL.createObjectURL(blob);
    document.getElementById("edit-audio").src = resultUrl;
    document.getElementById("edit-download").href = resultUrl;
    document.getElementById("edit-result").hidden = false;
    setStatus("edit-status", "Done.");
  } catch (error) {
    setStatus("edit-status", "");
    showError(error, FIELDS, "edit");
  } finally {
    button.disabled = false;
  }
}

export function initEdit() {
  document.getElementById("edit-file").addEventListener("change", load);
  document.getElementById("edit-start").addEventListener("input", redraw);
  document.getElementById("edit-end").addEventListener("input", redraw);
  document.getElementById("edit-form").addEventListener("submit", regenerate);
  selectWithMouse(document.getElementById("edit-wave"));
}
