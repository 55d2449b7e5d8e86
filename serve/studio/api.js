// The public HTTP API as the studio uses it: the bearer key (asked once, kept in localStorage), JSON errors
// turned into ApiError, and errors shown next to the control of the request field they are about.

const KEY_STORAGE = "flowtts.apiKey";

// `field`: the request field the error is about (the server's `error.field`), or undefined.
export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

let keyPrompt = null; // one dialog at a time, shared by concurrent requests

function askForKey(previousWasWrong) {
  if (keyPrompt) return keyPrompt;
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  document.getElementById("key-error").textContent = previousWasWrong ? "That key was refused (401)." : "";
  input.value = "";
  keyPrompt = new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      keyPrompt = null;
      const key = input.value.trim();
      if (key) localStorage.setItem(KEY_STORAGE, key);
      resolve(key);
    }, { once: true });
  });
  dialog.showModal();
  input.focus();
  return keyPrompt;
}

export function changeKey() {
  return askForKey(false);
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON (e.g. Serve's plain-text 408)
  }
  const error = body && body.error;
  if (error && error.message) return new ApiError(response.status, error.code, error.message, error.field);
  return new ApiError(response.status, "http_error", `the server answered ${response.status} ${response.statusText}`);
}

// fetch() with the stored key; on 401 the key is asked for and the request sent again.
// `options.json` is sent as a JSON body; `options.form` as multipart. Resolves to the Response (2xx only).
export async function api(path, options = {}) {
  const { json, form, ...init } = options;
  for (let attempt = 0; attempt < 3; attempt++) {
    const headers = new Headers(init.headers || {});
    const key = localStorage.getItem(KEY_STORAGE);
    if (key) headers.set("Authorization", `Bearer ${key}`);
    let body = init.body;
    if (json !== undefined) {
      headers.set("Content-Type", "application/json");
      body = JSON.stringify(json);
    } else if (form !== undefined) {
      body = form;
    }
    let response;
    try {
      response = await fetch(path, { ...init, headers, body });
    } catch (exc) {
      throw new ApiError(0, "network_error", `the server cannot be reached: ${exc.message}`);
    }
    if (response.ok) return response;
    if (response.status !== 401) throw await errorOf(response);
    if (key) localStorage.removeItem(KEY_STORAGE);
    if (!(await askForKey(Boolean(key)))) throw await errorOf(response);
  }
  throw new ApiError(401, "unauthorized", "no accepted API key was given");
}

export async function apiJson(path, options = {}) {
  return (await api(path, options)).json();
}

// An error of the page itself about a request field (no status: nothing was sent).
export function fieldError(field, message) {
  return new ApiError(0, "invalid_request", message, field);
}

// Show `error` next to the control of the field it is about (`fields`: {apiField: elementId}), else at
// `fallbackId`. Clears the other error boxes of the form.
export function showError(error, fields, fallbackId) {
  const ids = [...new Set([...Object.values(fields), fallbackId])];
  ids.forEach((id) => clearError(id));
  const message = error instanceof ApiError ? error.message : String(error.message || error);
  const field = error instanceof ApiError ? error.field : undefined;
  const target = field && Object.hasOwn(fields, field) ? fields[field] : fallbackId;
  const box = document.getElementById(`${target}-error`);
  box.textContent = error instanceof ApiError && error.status ? `${message} (${error.status})` : message;
  const control = document.getElementById(target);
  if (control && control.matches("input, select, textarea")) control.setAttribute("aria-invalid", "true");
  return target;
}

export function clearError(id) {
  const box = document.getElementById(`${id}-error`);
  if (box) box.textContent = "";
  const control = document.getElementById(id);
  if (control) control.removeAttribute("aria-invalid");
}

// A number input's value, or undefined when empty.
export function numberOf(id) {
  const text = document.getElementById(id).value.trim();
  return text === "" ? undefined : Number(text);
}

export function setStatus(id, text) {
  document.getElementById(id).textContent = text;
}
