// Audio in the browser: decoding, WAV encoding, base64, the mel spectrogram and waveform drawings.

export const SAMPLE_RATE = 24000;
const N_FFT = 1024;
const HOP = 256;
const N_MELS = 100;

let context = null;

export function audioContext() {
  if (!context) context = new AudioContext({ sampleRate: SAMPLE_RATE });
  return context;
}

// An audio file (Blob/ArrayBuffer) -> mono Float32Array at 24 kHz.
export async function decodeAudio(data) {
  const bytes = data instanceof Blob ? await data.arrayBuffer() : data;
  const buffer = await audioContext().decodeAudioData(bytes.slice(0));
  const mono = new Float32Array(buffer.length);
  for (let c = 0; c < buffer.numberOfChannels; c++) {
    const channel = buffer.getChannelData(c);
    for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / buffer.numberOfChannels;
  }
  return mono;
}

// 16-bit little-endian PCM bytes -> Float32Array.
export function pcm16ToFloat(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength - (bytes.byteLength % 2));
  const out = new Float32Array(view.byteLength / 2);
  for (let i = 0; i < out.length; i++) out[i] = view.getInt16(2 * i, true) / 32768;
  return out;
}

// Float32 samples -> a 16-bit PCM WAV Blob.
export function wavBlob(samples, rate = SAMPLE_RATE) {
  const view = new DataView(new ArrayBuffer(44 + 2 * samples.length));
  const text = (offset, s) => [...s].forEach((ch, i) => view.setUint8(offset + i, ch.charCodeAt(0)));
  text(0, "RIFF");
  view.setUint32(4, 36 + 2 * samples.length, true);
  text(8, "WAVEfmt ");
  view.setUint32(16, 16, true);
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, rate, true);
  view.setUint32(28, 2 * rate, true);
  view.setUint16(32, 2, true);
  view.setUint16(34, 16, true);
  text(36, "data");
  view.setUint32(40, 2 * samples.length, true);
  samples.forEach((s, i) => view.setInt16(44 + 2 * i, Math.max(-1, Math.min(1, s)) * 32767, true));
  return new Blob([view], { type: "audio/wav" });
}

export async function base64Of(blob) {
  const bytes = new Uint8Array(await blob.arrayBuffer());
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

// In-place radix-2 FFT of (re, im), length a power of two.
function fft(re, im) {
  const n = re.length;
  for (let i = 1, j = 0; i < n; i++) {
    let bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) {
      [re[i], re[j]] = [re[j], re[i]];
      [im[i], im[j]] = [im[j], im[i]];
    }
  }
  for (let size = 2; size <= n; size <<= 1) {
    const step = (-2 * Math.PI) / size;
    for (let start = 0; start < n; start += size) {
      for (let k = 0; k < size / 2; k++) {
        const wr = Math.cos(step * k);
        const wi = Math.sin(step * k);
        const a = start + k;
        const b = a + size / 2;
        const tr = re[b] * wr - im[b] * wi;
        const ti = re[b] * wi + im[b] * wr;
        re[b] = re[a] - tr;
        im[b] = im[a] - ti;
        re[a] += tr;
        im[a] += ti;
      }
    }
  }
}

const hzToMel = (hz) => 2595 * Math.log10(1 + hz / 700);
const melToHz = (mel) => 700 * (10 ** (mel / 2595) - 1);

function melFilters() {
  const bins = N_FFT / 2 + 1;
  const top = hzToMel(SAMPLE_RATE / 2);
  const edges = Array.from({ length: N_MELS + 2 }, (_, i) => (melToHz((top * i) / (N_MELS + 1)) * N_FFT) / SAMPLE_RATE);
  return Array.from({ length: N_MELS }, (_, m) => {
    const weights = new Float32Array(bins);
    for (let k = 0; k < bins; k++) {
      const rise = (k - edges[m]) / (edges[m + 1] - edges[m]);
      const fall = (edges[m + 2] - k) / (edges[m + 2] - edges[m + 1]);
      weights[k] = Math.max(0, Math.min(rise, fall));
    }
    return weights;
  });
}

// Log-mel spectrogram [frames][100] (Hann window 1024, hop 256, like the model's mel).
export function logMel(samples) {
  const filters = melFilters();
  const window = Float32Array.from({ length: N_FFT }, (_, i) => 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / N_FFT));
  const frames = [];
  for (let start = 0; start + N_FFT <= Math.max(samples.length, N_FFT); start += HOP) {
    const re = new Float32Array(N_FFT);
    const im = new Float32Array(N_FFT);
    for (let i = 0; i < N_FFT; i++) re[i] = (samples[start + i] || 0) * window[i];
    fft(re, im);
    const power = Array.from({ length: N_FFT / 2 + 1 }, (_, k) => Math.hypot(re[k], im[k]));
    frames.push(filters.map((w) => Math.log(Math.max(1e-5, w.reduce((sum, x, k) => sum + x * power[k], 0)))));
  }
  return frames;
}

// Draw a log-mel spectrogram on a canvas (low frequencies at the bottom); returns the frame count.
export function drawMel(canvas, samples) {
  const mel = logMel(samples);
  const g = canvas.getContext("2d");
  const flat = mel.flat();
  const low = flat.reduce((a, b) => Math.min(a, b), Infinity);
  const high = flat.reduce((a, b) => Math.max(a, b), -Infinity);
  const image = g.createImageData(mel.length, N_MELS);
  mel.forEach((frame, x) =>
    frame.forEach((value, m) => {
      const t = (value - low) / (high - low || 1);
      const offset = 4 * ((N_MELS - 1 - m) * mel.length + x);
      image.data.set([255 * Math.min(1, 1.6 * t), 255 * t * t, 255 * (0.4 + 0.6 * (1 - t)) * t + 40 * (1 - t), 255], offset);
    }),
  );
  const bitmap = document.createElement("canvas");
  bitmap.width = mel.length;
  bitmap.height = N_MELS;
  bitmap.getContext("2d").putImageData(image, 0, 0);
  g.imageSmoothingEnabled = false;
  g.clearRect(0, 0, canvas.width, canvas.height);
  g.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  return mel.length;
}

// Draw a waveform (peak per pixel column) with the selected span [start, end] seconds shaded.
export function drawWave(canvas, samples, span) {
  const g = canvas.getContext("2d");
  const { width, height } = canvas;
  g.clearRect(0, 0, width, height);
  const seconds = samples.length / SAMPLE_RATE;
  if (span && span[1] > span[0]) {
    g.fillStyle = "rgba(59, 130, 246, 0.25)";
    g.fillRect((span[0] / seconds) * width, 0, ((span[1] - span[0]) / seconds) * width, height);
  }
  g.fillStyle = "#1e3a8a";
  const per = Math.max(1, Math.floor(samples.length / width));
  for (let x = 0; x < width; x++) {
    let peak = 0;
    for (let i = x * per; i < (x + 1) * per && i < samples.length; i++) peak = Math.max(peak, Math.abs(samples[i]));
    g.fillRect(x, height / 2 - (peak * height) / 2, 1, Math.max(1, peak * height));
  }
}

// Play Float32 chunks as they come, back to back.
export class ChunkPlayer {
  constructor() {
    this.context = audioContext();
    this.next = 0;
  }

  push(samples) {
    if (!samples.length) return;
    const buffer = this.context.createBuffer(1, samples.length, SAMPLE_RATE);
    buffer.copyToChannel(samples, 0);
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    this.next = Math.max(this.next, this.context.currentTime + 0.05);
    source.start(this.next);
    this.next += buffer.duration;
  }
}
