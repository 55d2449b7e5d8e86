// The studio page: each section's module wires its own controls; the first request that meets a 401 asks
// for the API key (once; kept in localStorage), and the others wait for that answer.

import { changeKey, clearError } from "./api.js";
import { initEdit } from "./edit.js";
import { initModel, loadModel } from "./model.js";
import { initSpeak } from "./speak.js";
import { initTrain } from "./train.js";
import { initVoices, loadVoices } from "./voices.js";

document.getElementById("key-change").addEventListener("click", async () => {
  await changeKey();
  await Promise.all([loadVoices(), loadModel(), initTrain()]);
});
// an error box empties as soon as its control is changed
document.querySelectorAll("form").forEach((form) => form.addEventListener("input", (e) => clearError(e.target.id)));
initSpeak();
initVoices();
initEdit();
initModel();
await loadVoices();
await Promise.all([loadModel(), initTrain()]);
document.body.dataset.ready = "true";
