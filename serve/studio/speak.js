// Speak: POST /v1/tts with a stored voice; the result in a player with a download link and its mel drawn.
// With "Stream", 16-bit PCM is played chunk by chunk as the server sends it (stream: true).
// "Candidates" > 1 asks for the best of N takes of each part: the kept seeds (X-Chosen-Seed) and every take's
// scores (X-Candidate-Scores) are shown under the result; a stream chooses part by part and sends no scores.

import { api, clearError, numberOf, setStatus, showError } from "./api.js";
import { ChunkPlayer, decodeAudio, drawMel, pcm16ToFloat, SAMPLE_RATE, wavBlob } from "./audio.js";

const FIELDS = {
  text: "speak-text",
  voice: "speak-voice",
  nfe: "speak-steps",
  speed: "speak-speed",
  seed: "speak-seed",
  cfg_strength: "speak-cfg",
  candidates: "speak-candidates",
};
let resultUrl = null;

function request(stream) {
  return {
    text: document.getElementById("speak-text").value,
    voice: document.getElementById("speak-voice").value || undefined,
    nfe: numberOf("speak-steps"),
    speed: numberOf("speak-speed"),
    seed: numberOf("speak-seed"),
    cfg_strength: numberOf("speak-cfg"),
    candidates: numberOf("speak-candidates"),
    response_format: stream ? "pcm" : "wav",
    stream,
  };
}

async function streamed(response) {
  const player = new ChunkPlayer();
  const reader = response.body.getReader();
  const parts = [];
  let carry = new Uint8Array(0);
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    const bytes = new Uint8Array(carry.length + value.length);
    bytes.set(carry);
    bytes.set(value, carry.length);
    const even = bytes.length - (bytes.length % 2);
    carry = bytes.slice(even);
    const samples = pcm16ToFloat(bytes.subarray(0, even));
    parts.push(samples);
    player.push(samples);
    setStatus("speak-status", `Streaming… ${(parts.reduce((n, p) => n + p.length, 0) / SAMPLE_RATE).toFixed(1)} s`);
  }
  const all = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  parts.reduce((offset, p) => (all.set(p, offset), offset + p.length), 0);
  return { blob: wavBlob(all), samples: all };
}

// The table of candidates: one row per take of each part, the kept one marked.
function showScores(response) {
  const table = document.getElementById("speak-scores");
  const scores = JSON.parse(response.headers.get("X-Candidate-Scores") || "[]");
  const kept = (response.headers.get("X-Chosen-Seed") || "").split(",");
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const score of scores) {
    const row = body.insertRow();
    const isKept = kept[score.chunk] === String(score.seed);
    row.dataset.kept = String(isKept);
    const cells = [score.chunk + 1, score.seed, score.cer.toFixed(3), score.similarity?.toFixed(3) ?? "—", isKept ? "kept" : ""];
    for (const text of cells) row.insertCell().textContent = String(text);
  }
  table.hidden = scores.length === 0;
}

function describeResult(response, samples) {
  const seconds = (samples.length / SAMPLE_RATE).toFixed(2);
  const candidates = Number(response.headers.get("X-Candidates") || "1");
  const kept = response.headers.get("X-Chosen-Seed");
  let text = `${seconds} s · seed ${response.headers.get("X-Seed")} · model ${response.headers.get("X-Model-Version")}`;
  if (candidates > 1) text += kept ? ` · best of ${candidates}, kept seed ${kept}` : ` · best of ${candidates}`;
  return text;
}

async function speak(event) {
  event.preventDefault();
  const button = document.getElementById("speak-button");
  const stream = document.getElementById("speak-stream").checked;
  Object.values(FIELDS).forEach(clearError);
  clearError("speak");
  button.disabled = true;
  setStatus("speak-status", "Generating…");
  try {
    const response = await api("/v1/tts", { method: "POST", json: request(stream) });
    let blob;
    let samples;
    if (stream) {
      ({ blob, samples } = await streamed(response));
    } else {
      blob = await response.blob();
      samples = await decodeAudio(blob);
    }
    if (resultUrl) URL.revokeObjectURL(resultUrl);
    resultUrl = URL.createObjectURL(blob);
    const audio = document.getElementById("speak-audio");
    audio.src = resultUrl;
    document.getElementById("speak-download").href = resultUrl;
    document.getElementById("speak-result").hidden = false;
    const info = document.getElementById("speak-info");
    info.textContent = describeResult(response, samples);
    info.dataset.seed = response.headers.get("X-Seed");
    showScores(response);
    drawMel(document.getElementById("speak-mel"), samples);
    setStatus("speak-status", "Done.");
  } catch (error) {
    setStatus("speak-status", "");
    showError(error, FIELDS, "speak");
  } finally {
    button.disabled = false;
  }
}

export function initSpeak() {
  document.getElementById("speak-form").addEventListener("submit", speak);
}
