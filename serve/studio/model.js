// Model: the served model (GET /v1/models) and, when it comes from a registry, the registry's versions
// with their aliases, held-out metrics, the evaluation gate's decisions and a link to each evaluated version's
// report (evaluation/report.html of its run, opened in a new tab through a signed link the registry view gives).

import { apiJson, clearError, setStatus, showError } from "./api.js";

function cell(row, text) {
  const td = row.insertCell();
  td.textContent = text;
  return td;
}

function describe(card) {
  const list = document.getElementById("model-served");
  const entries = [
    ["Name", card.name],
    ["Version", card.version ?? "—"],
    ["Alias", card.alias ?? "—"],
    ["Source", card.uri],
    ["Backbone", `${card.config.backbone}, ${(card.config.parameters / 1e6).toFixed(1)} M parameters`],
  ];
  list.replaceChildren(
    ...entries.flatMap(([term, value]) => [
      Object.assign(document.createElement("dt"), { textContent: term }),
      Object.assign(document.createElement("dd"), { textContent: value }),
    ]),
  );
}

function gate(tags) {
  return Object.entries(tags)
    .filter(([key]) => key.startsWith("promotion.") && key.endsWith(".decision"))
    .map(([key, value]) => `${key.slice(10, -9)}: ${value}`)
    .join(", ");
}

function fillRegistry(view) {
  const table = document.getElementById("registry-table");
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const version of view.versions) {
    const row = body.insertRow();
    row.dataset.version = version.version;
    cell(row, version.version);
    cell(row, version.aliases.join(", ") || "—");
    cell(row, new Date(version.created_at * 1000).toISOString().slice(0, 16).replace("T", " ") + " UTC");
    const metrics = Object.entries(version.metrics).filter(([key]) => key.startsWith("eval/model/"));
    cell(row, metrics.map(([key, value]) => `${key.slice(11)} ${value.toFixed(3)}`).join(", ") || "not evaluated");
    cell(row, gate(version.tags) || "—");
    const report = cell(row, version.report ? "" : "—");
    if (version.report) {
      const link = Object.assign(document.createElement("a"), {
        href: version.report,
        target: "_blank",
        rel: "noopener",
        textContent: "Evaluation report",
      });
      link.setAttribute("aria-label", `Evaluation report of version ${version.version}`);
      report.append(link);
    }
  }
  table.hidden = false;
  setStatus("registry-status", `${view.name}: ${view.versions.length} version(s).`);
}

export async function loadModel() {
  clearError("model");
  try {
    const { data } = await apiJson("/v1/models");
    describe(data[0]);
  } catch (error) {
    showError(error, {}, "model");
    return;
  }
  try {
    fillRegistry(await apiJson("/v1/registry"));
  } catch (error) {
    document.getElementById("registry-table").hidden = true;
    setStatus("registry-status", error.code === "no_registry" ? error.message : "");
    if (error.code !== "no_registry") showError(error, {}, "model");
  }
}

export function initModel() {
  document.getElementById("model-refresh").addEventListener("click", loadModel);
}
