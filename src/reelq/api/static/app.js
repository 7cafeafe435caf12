// reelq's page: a plain client of the Vidu reseller surface, no framework, no build step.
//
// The API key stays in this browser (sessionStorage, or localStorage when "remember" is ticked)
// and is sent only to this origin, in the Authorization header. Live status comes from the
// server-sent events of /v1/result/{id}/events read with fetch() streaming: EventSource cannot send
// an Authorization header, and a key in the URL would end up in logs. Browsers allow about six
// connections per origin over HTTP/1.1, so at most MAX_STREAMS tasks are streamed at once; the
// others wait their turn (the list is refreshed as streams end).
"use strict";

const MAX_STREAMS = 3;
const KEY_NAME = "reelq.apiKey";
const TERMINAL = new Set(["completed", "failed"]);

const $ = (id) => document.getElementById(id);
const api = (path) => new URL(path, document.baseURI).toString();

const state = {
  tasks: new Map(), // id -> {data, el}
  streams: new Map(), // id -> AbortController
  waiting: [],
};

// ---- the key ------------------------------------------------------------------------------------
function getKey() {
  return sessionStorage.getItem(KEY_NAME) || localStorage.getItem(KEY_NAME) || "";
}

function setKey(key, remember) {
  sessionStorage.removeItem(KEY_NAME);
  localStorage.removeItem(KEY_NAME);
  if (key) (remember ? localStorage : sessionStorage).setItem(KEY_NAME, key);
}

async function call(method, path, body) {
  const headers = { Authorization: `Bearer ${getKey()}` };
  const init = { method, headers, cache: "no-store", referrerPolicy: "no-referrer" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(api(path), init);
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (!response.ok) {
    const message = (data && data.error && data.error.message) || `HTTP ${response.status}`;
    throw new Error(message);
  }
  return data;
}

// ---- the models on offer (from the server's own OpenAPI document) --------------------------------
async function loadModels() {
  const select = $("model");
  let models = ["viduq3-pro", "viduq3-turbo"];
  try {
    const doc = await (await fetch(api("openapi.json"))).json();
    const schema = doc.paths["/v1/vidu/videos"].post.requestBody.content["application/json"].schema;
    if (schema.properties.model.enum) models = schema.properties.model.enum;
  } catch (_) {
    // keep the defaults
  }
  select.replaceChildren(...models.map((name) => new Option(name, name)));
}

// ---- images: an upload becomes a data URI (checked by the server), else the URL as typed ---------
function readFile(input) {
  const file = input.files && input.files[0];
  if (!file) return Promise.resolve(null);
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`Could not read ${file.name}.`));
    reader.readAsDataURL(file);
  });
}

async function imageValue(fileId, urlId) {
  const uploaded = await readFile($(fileId));
  if (uploaded) return uploaded;
  const url = $(urlId).value.trim();
  return url || null;
}

// ---- the list -------------------------------------------------------------------------------------
function render(task) {
  let entry = state.tasks.get(task.id);
  if (!entry) {
    const el = $("task-template").content.firstElementChild.cloneNode(true);
    el.querySelector(".cancel").addEventListener("click", () => cancelTask(task.id));
    el.querySelector(".delete").addEventListener("click", () => deleteTask(task.id));
    entry = { data: task, el };
    state.tasks.set(task.id, entry);
  }
  entry.data = task;
  const el = entry.el;
  const progress = task.status === "completed" ? 100 : task.progress || 0;
  el.dataset.status = task.status;
  el.dataset.id = task.id;
  el.querySelector(".task-id").textContent = task.id;
  el.querySelector(".task-model").textContent = `${task.model} · ${new Date(task.created * 1000).toLocaleString()}`;
  el.querySelector(".task-status").textContent =
    task.status === "processing" ? `processing ${progress}%` : task.status;
  const bar = el.querySelector("progress");
  bar.value = progress;
  bar.setAttribute("aria-label", `Progress of ${task.id}: ${progress}%`);
  const error = el.querySelector(".task-error");
  error.hidden = task.status !== "failed";
  error.textContent = task.error || "";
  const media = el.querySelector(".task-media");
  if (task.status === "completed" && task.video_url) {
    const video = media.querySelector("video");
    if (video.getAttribute("src") !== task.video_url) {
      video.src = task.video_url;
      video.setAttribute("aria-label", `Video ${task.id}`);
      const link = media.querySelector(".download");
      link.href = task.video_url;
      link.setAttribute("download", `${task.id}.mp4`);
    }
    media.hidden = false;
  }
  el.querySelector(".cancel").hidden = TERMINAL.has(task.status);
  return el;
}

function showList(tasks) {
  const list = $("tasks");
  list.replaceChildren(...tasks.map(render));
  $("tasks-status").textContent = tasks.length ? "" : "No videos yet.";
  for (const task of tasks) if (!TERMINAL.has(task.status)) watch(task.id);
}

async function refresh() {
  if (!getKey()) {
    $("tasks-status").textContent = "Enter your API key to see your videos.";
    return;
  }
  try {
    const page = await call("GET", "v1/vidu/videos?limit=20");
    for (const id of [...state.tasks.keys()]) {
      if (!page.data.some((t) => t.id === id)) forget(id);
    }
    showList(page.data);
  } catch (err) {
    $("tasks-status").textContent = `Could not list your videos: ${err.message}`;
  }
}

function forget(id) {
  const stream = state.streams.get(id);
  if (stream) stream.abort();
  state.streams.delete(id);
  state.waiting = state.waiting.filter((w) => w !== id);
  const entry = state.tasks.get(id);
  if (entry) entry.el.remove();
  state.tasks.delete(id);
}

// ---- live status: server-sent events over fetch() -------------------------------------------------
function watch(id) {
  if (state.streams.has(id) || state.waiting.includes(id)) return;
  if (state.streams.size >= MAX_STREAMS) {
    state.waiting.push(id);
    return;
  }
  const controller = new AbortController();
  state.streams.set(id, controller);
  stream(id, controller).finally(() => {
    state.streams.delete(id);
    const next = state.waiting.shift();
    if (next) watch(next);
  });
}

async function stream(id, controller) {
  let lastEventId = null;
  for (let attempt = 0; attempt < 20 && !controller.signal.aborted; attempt++) {
    const headers = { Authorization: `Bearer ${getKey()}`, Accept: "text/event-stream" };
    if (lastEventId) headers["Last-Event-ID"] = lastEventId;
    try {
      const response = await fetch(api(`v1/result/${id}/events`), {
        headers,
        signal: controller.signal,
        cache: "no-store",
      });
      if (response.status === 204) return;
      if (response.status === 404) return forget(id);
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const event = parseEvent(block);
          if (event.id) lastEventId = event.id;
          if (event.data) {
            const task = JSON.parse(event.data);
            render(task);
            if (TERMINAL.has(task.status)) return;
          }
        }
      }
    } catch (err) {
      if (controller.signal.aborted) return;
    }
    const entry = state.tasks.get(id);
    if (entry && TERMINAL.has(entry.data.status)) return;
    await new Promise((resolve) => setTimeout(resolve, 1000)); // the stream dropped: resume
  }
}

function parseEvent(block) {
  const event = { id: null, data: "" };
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue; // keep-alive comment
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "data") event.data += (event.data ? "\n" : "") + value;
    else if (field === "id") event.id = value;
  }
  return event;
}

// ---- actions --------------------------------------------------------------------------------------
async function createTask(event) {
  event.preventDefault();
  const status = $("form-status");
  if (!getKey()) {
    status.textContent = "Enter your API key first.";
    $("api-key").focus();
    return;
  }
  const button = $("submit");
  button.disabled = true;
  status.textContent = "Submitting…";
  try {
    const body = {
      model: $("model").value,
      prompt: $("prompt").value,
      duration: Number($("duration").value),
      aspect_ratio: $("aspect-ratio").value,
      resolution: $("resolution").value,
    };
    const first = await imageValue("first-file", "first-url");
    const last = await imageValue("last-file", "last-url");
    if (first) body.first_image = first;
    if (last) body.last_image = last;
    const task = await call("POST", "v1/vidu/videos", body);
    $("tasks").prepend(render(task));
    $("tasks-status").textContent = "";
    status.textContent = `Created ${task.id}.`;
    watch(task.id);
  } catch (err) {
    status.textContent = `Not created: ${err.message}`;
  } finally {
    button.disabled = false;
  }
}

async function cancelTask(id) {
  try {
    render(await call("POST", `v1/vidu/videos/${id}/cancel`));
  } catch (err) {
    $("tasks-status").textContent = `Could not cancel ${id}: ${err.message}`;
  }
}

async function deleteTask(id) {
  try {
    await call("DELETE", `v1/vidu/videos/${id}`);
    forget(id);
    $("tasks-status").textContent = `Deleted ${id}.`;
  } catch (err) {
    $("tasks-status").textContent = `Could not delete ${id}: ${err.message}`;
  }
}

// ---- start ----------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = getKey();
  $("remember-key").checked = Boolean(localStorage.getItem(KEY_NAME));
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    for (const id of [...state.tasks.keys()]) forget(id);
    setKey($("api-key").value.trim(), $("remember-key").checked);
    refresh();
  });
  $("forget-key").addEventListener("click", () => {
    setKey("", false);
    $("api-key").value = "";
    for (const id of [...state.tasks.keys()]) forget(id);
    $("tasks-status").textContent = "Key forgotten.";
  });
  $("create-form").addEventListener("submit", createTask);
  $("refresh").addEventListener("click", refresh);
  loadModels();
  refresh();
});
