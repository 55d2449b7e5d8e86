// Train: submit jobs/train.py as a Ray job (POST /v1/train), follow its status, log tail and loss curve
// (GET /v1/train/{id}), stop it; when it succeeds, the Model section shows the version it registered.

import { apiJson, clearError, fieldError, numberOf, showError } from "./api.js";
import { loadModel } from "./model.js";

const FIELDS = {
  data: "train-data",
  preset: "train-preset",
  init_from: "train-init",
  max_steps: "train-steps",
  learning_rate: "train-lr",
  overrides: "train-overrides",
};
const ACTIVE = new Set(["PENDING", "RUNNING"]);
const POLL_MS = 3000;
const followed = new Map(); // job id -> <li>

function overrides() {
  const values = {};
  for (const line of document.getElementById("train-overrides").value.split("\n")) {
    if (!line.trim()) continue;
    const [key, ...rest] = line.split("=");
    if (!rest.length) {
      throw fieldError("overrides", `override "${line.trim()}": write key=value, e.g. train.batch_size_per_gpu=1500`);
    }
    const text = rest.join("=").trim();
    values[key.trim()] = text === "true" ? true : text === "false" ? false : text !== "" && !isNaN(text) ? Number(text) : text;
  }
  return values;
}

function drawLoss(canvas, points) {
  const g = canvas.getContext("2d");
  const { width, height } = canvas;
  g.clearRect(0, 0, width, height);
  g.strokeStyle = "#94a3b8";
  g.strokeRect(0.5, 0.5, width - 1, height - 1);
  if (points.length < 1) return;
  const steps = points.map((p) => p[0]);
  const losses = points.map((p) => p[1]);
  const range = (values) => values.reduce(([lo, hi], v) => [Math.min(lo, v), Math.max(hi, v)], [Infinity, -Infinity]);
  const [x0, x1] = range(steps); // long runs have many points: no Math.min(...spread)
  const [y0, y1] = range(losses);
  const x = (step) => 8 + ((step - x0) / (x1 - x0 || 1)) * (width - 16);
  const y = (loss) => height - 8 - ((loss - y0) / (y1 - y0 || 1)) * (height - 24);
  g.strokeStyle = "#1d4ed8";
  g.lineWidth = 2;
  g.beginPath();
  points.forEach(([step, loss], i) => (i ? g.lineTo(x(step), y(loss)) : g.moveTo(x(step), y(loss))));
  g.stroke();
  g.fillStyle = "#1d4ed8";
  points.forEach(([step, loss]) => g.fillRect(x(step) - 2, y(loss) - 2, 4, 4));
  g.fillStyle = "#334155";
  g.font = "12px sans-serif";
  g.fillText(`loss ${losses.at(-1).toFixed(3)} at step ${steps.at(-1)}`, 10, 14);
}

function jobItem(job) {
  const item = document.createElement("li");
  item.className = "job";
  item.dataset.job = job.id;
  item.innerHTML = `<p><strong class="job-id"></strong> <span class="job-status" role="status"></span></p>
    <p class="job-version"></p><p class="error" id="${job.id}-error" role="alert"></p>
    <canvas class="job-loss" width="480" height="140" role="img"></canvas>
    <details><summary>Log</summary><pre class="job-log" tabindex="0"></pre></details>`;
  item.querySelector(".job-id").textContent = job.id;
  item.querySelector(".job-loss").setAttribute("aria-label", `Loss curve of ${job.id}`);
  const stop = document.createElement("button");
  stop.type = "button";
  stop.textContent = "Stop";
  stop.setAttribute("aria-label", `Stop ${job.id}`);
  stop.addEventListener("click", async () => {
    try {
      show(item, await apiJson(`/v1/train/${job.id}/stop`, { method: "POST" }));
    } catch (error) {
      showError(error, {}, job.id);
    }
  });
  item.querySelector("p").append(" ", stop);
  return item;
}

function show(item, job) {
  item.dataset.status = job.status;
  item.querySelector(".job-status").textContent = job.message ? `${job.status}: ${job.message}` : job.status;
  item.querySelector("button").hidden = !ACTIVE.has(job.status);
  if (job.logs !== null && job.logs !== undefined) item.querySelector(".job-log").textContent = job.logs;
  if (job.loss) drawLoss(item.querySelector(".job-loss"), job.loss);
  item.querySelector(".job-loss").dataset.points = job.loss ? job.loss.length : 0;
  if (job.model_version) item.querySelector(".job-version").textContent = `Registered version ${job.model_version}.`;
}

async function follow(job) {
  if (followed.has(job.id)) {
    show(followed.get(job.id), job);
    return; // already polled
  }
  const item = jobItem(job);
  followed.set(job.id, item);
  document.getElementById("train-jobs").prepend(item);
  show(item, job);
  let last = job.status;
  for (;;) {
    try {
      const detail = await apiJson(`/v1/train/${job.id}`);
      show(item, detail);
      if (!ACTIVE.has(detail.status)) {
        if (ACTIVE.has(last) && detail.status === "SUCCEEDED") await loadModel();
        return;
      }
      last = detail.status;
    } catch (error) {
      showError(error, {}, job.id);
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

async function submit(event) {
  event.preventDefault();
  Object.values(FIELDS).forEach(clearError);
  clearError("train");
  try {
    const lr = document.getElementById("train-lr").value.trim();
    const body = {
      data: document.getElementById("train-data").value.trim(),
      preset: document.getElementById("train-preset").value,
      init_from: document.getElementById("train-init").value.trim() || undefined,
      max_steps: numberOf("train-steps"),
      learning_rate: lr === "" ? undefined : isNaN(lr) ? lr : Number(lr),
      overrides: overrides(),
    };
    follow(await apiJson("/v1/train", { method: "POST", json: body }));
  } catch (error) {
    showError(error, FIELDS, "train");
  }
}

export async function initTrain() {
  let listing;
  try {
    listing = await apiJson("/v1/train");
  } catch (error) {
    document.getElementById("train-off").textContent =
      error.code === "training_disabled" ? `${error.message}.` : `Training is unavailable: ${error.message}`;
    return;
  }
  const form = document.getElementById("train-form");
  document.getElementById("train-off").textContent = "";
  if (form.hidden) form.addEventListener("submit", submit);
  form.hidden = false;
  const preset = document.getElementById("train-preset");
  preset.replaceChildren(...listing.presets.map((name) => new Option(name, name, false, name === "tiny")));
  listing.jobs.forEach(follow);
}
