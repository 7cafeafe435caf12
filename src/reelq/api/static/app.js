// reelq's playground: a plain client of the Vidu reseller surface, no framework, no build step.
//
// The API key stays in this browser (sessionStorage, or localStorage when "remember" is ticked)
// and is sent only to this origin, in the Authorization header. The form is built from
// GET /v1/models (the models this key may use and what each accepts); the gallery is
// GET /v1/vidu/videos, a page at a time, each card with the video's cover frame as poster; a card
// opens the video in a dialog. Live status comes from the server-sent events of
// /v1/result/{id}/events read with fetch() streaming: EventSource cannot send an Authorization
// header, and a key in the URL would end up in logs. Browsers allow about six connections per origin
// over HTTP/1.1, so at most MAX_STREAMS tasks are streamed at once; the others wait their turn.
"use strict";

const MAX_STREAMS = 3;
const PAGE_SIZE = 12;
const KEY_NAME = "reelq.apiKey";
const TERMINAL = new Set(["completed", "failed"]);
const FALLBACK_MODELS = [{ id: "viduq3-pro" }, { id: "viduq3-turbo" }];

const $ = (id) => document.getElementById(id);
const api = (path) => new URL(path, document.baseURI).toString();

const state = {
  tasks: new Map(), // id -> {data, el}
  streams: new Map(), // id -> AbortController
  waiting: [],
  models: new Map(), // id -> the model object of GET /v1/models
  cursors: [null], // the cursor of each page seen so far; the last is the page shown
  nextCursor: null,
  opener: null, // the button that opened the player, to give focus back
  refreshTimer: null,
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
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return data;
}

// ---- the models on offer: GET /v1/models --------------------------------------------------------
async function loadModels() {
  let models = FALLBACK_MODELS;
  if (getKey()) {
    try {
      const list = await call("GET", "v1/models");
      if (list && Array.isArray(list.data) && list.data.length) models = list.data;
    } catch (_) {
      // an older server, or a key not accepted yet: the defaults, unconstrained
    }
  }
  state.models = new Map(models.map((m) => [m.id, m]));
  const select = $("model");
  const chosen = select.value;
  select.replaceChildren(...models.map((m) => new Option(m.id, m.id)));
  if (state.models.has(chosen)) select.value = chosen;
  applyModel();
}

function setOptions(select, values) {
  const chosen = select.value;
  select.replaceChildren(...values.map((v) => new Option(v, v)));
  if (values.includes(chosen)) select.value = chosen;
  else if (values.includes("720p")) select.value = "720p";
}

// The form offers what the chosen model accepts: its longest duration, its resolutions and ratios,
// and the image fields only where it takes them.
function applyModel() {
  const model = state.models.get($("model").value) || {};
  const duration = $("duration");
  const max = model.max_duration || 16;
  duration.max = String(max);
  if (Number(duration.value) > max) duration.value = String(max);
  if (model.resolutions) setOptions($("resolution"), model.resolutions);
  if (model.aspect_ratios) setOptions($("aspect-ratio"), model.aspect_ratios);
  const first = model.first_image !== false;
  const last = model.last_image !== false;
  $("first-image").disabled = !first;
  $("last-image").disabled = !last;
  const takes = first ? (last ? "text, a first image, or first and last images" : "text or a first image") : "text only";
  $("model-help").textContent = model.max_duration
    ? `${model.id}: up to ${max} s; takes ${takes}.`
    : "";
  updateCode();
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

async function imageValue(which) {
  if ($(`${which}-image`).disabled) return null;
  const uploaded = await readFile($(`${which}-file`));
  if (uploaded) return uploaded;
  const url = $(`${which}-url`).value.trim();
  return url || null;
}

// A preview of an uploaded image (a blob: URL: nothing leaves the browser). A typed URL is not
// previewed: showing it would make this page fetch from a third party.
function preview(which) {
  const img = $(`${which}-preview`);
  const file = $(`${which}-file`).files[0];
  if (img.src) URL.revokeObjectURL(img.src);
  if (!file) {
    img.hidden = true;
    img.removeAttribute("src");
    return;
  }
  img.src = URL.createObjectURL(file);
  img.alt = `Preview of the ${which} image, ${file.name}`;
  img.hidden = false;
  updateCode();
}

// ---- "copy as curl / Python" --------------------------------------------------------------------
function formBody() {
  const body = {
    model: $("model").value,
    prompt: $("prompt").value,
    duration: Number($("duration").value),
    aspect_ratio: $("aspect-ratio").value,
    resolution: $("resolution").value,
  };
  const seed = $("seed").value.trim();
  if (seed !== "") body.seed = Number(seed);
  return body;
}

function codeBody() {
  const body = formBody();
  for (const which of ["first", "last"]) {
    if ($(`${which}-image`).disabled) continue;
    const file = $(`${which}-file`).files[0];
    const url = $(`${which}-url`).value.trim();
    if (file) body[`${which}_image`] = `data:${file.type || "image/png"};base64,<${file.name} as base64>`;
    else if (url) body[`${which}_image`] = url;
  }
  return body;
}

function shellQuote(text) {
  return `'${text.replace(/'/g, `'"'"'`)}'`;
}

function pythonValue(value) {
  if (typeof value === "string") return JSON.stringify(value);
  return String(value);
}

function updateCode() {
  const body = codeBody();
  const url = api("v1/vidu/videos");
  $("curl-code").textContent =
    `curl -s ${url} \\\n` +
    `  -H "Authorization: Bearer $REELQ_API_KEY" \\\n` +
    `  -H "Content-Type: application/json" \\\n` +
    `  -d ${shellQuote(JSON.stringify(body))}`;
  const fields = Object.entries(body)
    .map(([k, v]) => `    ${k}=${pythonValue(v)},`)
    .join("\n");
  $("python-code").textContent =
    `# pip install reelq; export REELQ_API_KEY=...\n` +
    `import os\nfrom reelq.client import Client\n\n` +
    `with Client(base_url=${JSON.stringify(api("").replace(/\/$/, ""))}, api_key=os.environ["REELQ_API_KEY"]) as client:\n` +
    `    task = client.create_and_wait(\n${fields}\n    )\n` +
    `    client.download(task, "video.mp4")\n`;
}

async function copy(targetId, label) {
  const status = $("copy-status");
  try {
    await navigator.clipboard.writeText($(targetId).textContent);
    status.textContent = `${label} copied.`;
  } catch (_) {
    // No clipboard (an insecure origin): select the text for Ctrl+C instead.
    const range = document.createRange();
    range.selectNodeContents($(targetId));
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    status.textContent = `${label} selected: press Ctrl+C to copy.`;
  }
}

// ---- the account: usage and, where the key has one, its budget ------------------------------------
async function loadAccount() {
  const account = $("account");
  if (!getKey()) {
    account.textContent = "";
    return;
  }
  try {
    const usage = await call("GET", "v1/usage");
    const parts = [`${usage.videos} video${usage.videos === 1 ? "" : "s"}`, `${usage.totalTokens} tokens used`];
    const budget = usage.budget;
    if (budget && budget.available !== null && budget.available !== undefined) {
      parts.push(`${budget.available} of ${budget.limit} tokens left`);
    }
    account.textContent = parts.join(" · ");
  } catch (_) {
    account.textContent = "";
  }
}

// ---- the gallery ----------------------------------------------------------------------------------
function describe(task) {
  const parts = [task.model];
  const seconds = task.actualDuration !== undefined ? task.actualDuration : task.duration;
  if (seconds !== undefined) parts.push(`${seconds} s`);
  if (task.resolution) parts.push(task.aspect_ratio ? `${task.resolution} ${task.aspect_ratio}` : task.resolution);
  if (task.totalTokens !== null && task.totalTokens !== undefined) parts.push(`${task.totalTokens} tokens`);
  if (task.seed !== null && task.seed !== undefined) parts.push(`seed ${task.seed}`);
  return parts.join(" · ");
}

function render(update) {
  let entry = state.tasks.get(update.id);
  if (!entry) {
    const el = $("task-template").content.firstElementChild.cloneNode(true);
    el.querySelector(".cancel").addEventListener("click", () => cancelTask(update.id));
    el.querySelector(".delete").addEventListener("click", () => deleteTask(update.id));
    el.querySelector(".play").addEventListener("click", (event) => openPlayer(update.id, event.currentTarget));
    entry = { data: {}, el };
    state.tasks.set(update.id, entry);
  }
  // Events and the create's answer carry the task object only: keep what the list said was asked.
  const task = { ...entry.data, ...update };
  entry.data = task;
  const el = entry.el;
  const progress = task.status === "completed" ? 100 : task.progress || 0;
  const name = task.prompt ? `“${truncate(task.prompt, 60)}”` : task.id;
  el.dataset.status = task.status;
  el.dataset.id = task.id;
  el.querySelector(".task-prompt").textContent = task.prompt || "(prompt not shown)";
  el.querySelector(".task-meta").textContent = describe(task);
  el.querySelector(".task-id").textContent = task.id;
  el.querySelector(".task-status").textContent =
    task.status === "processing" ? `processing ${progress}%` : task.status;
  const bar = el.querySelector("progress");
  bar.value = progress;
  bar.hidden = TERMINAL.has(task.status);
  bar.setAttribute("aria-label", `Progress of ${name}: ${progress}%`);
  const error = el.querySelector(".task-error");
  error.hidden = task.status !== "failed";
  error.textContent = task.error || "";
  const cover = el.querySelector(".cover");
  if (task.cover_url && cover.getAttribute("src") !== task.cover_url) {
    cover.src = task.cover_url;
  }
  cover.hidden = !task.cover_url;
  el.querySelector(".poster").dataset.ratio = (task.aspect_ratio || "16:9").replace(":", "-");
  el.querySelector(".poster-text").textContent = task.cover_url ? "" : task.status === "completed" ? "▶" : task.status;
  const done = task.status === "completed" && task.video_url;
  const play = el.querySelector(".play");
  play.hidden = !done;
  play.setAttribute("aria-label", `Play ${name}`);
  const link = el.querySelector(".download");
  link.hidden = !done;
  if (done) {
    link.href = task.video_url;
    link.setAttribute("download", `${task.id}.mp4`);
    link.setAttribute("aria-label", `Download ${name} as MP4`);
  }
  el.querySelector(".cancel").hidden = TERMINAL.has(task.status);
  el.querySelector(".cancel").setAttribute("aria-label", `Cancel ${name}`);
  el.querySelector(".delete").setAttribute("aria-label", `Delete ${name}`);
  return el;
}

function truncate(text, n) {
  const flat = text.replace(/\s+/g, " ").trim();
  return flat.length > n ? `${flat.slice(0, n - 1)}…` : flat;
}

function showList(tasks) {
  $("tasks").replaceChildren(...tasks.map(render));
  $("tasks-status").textContent = tasks.length ? "" : "No videos yet.";
  for (const task of tasks) if (!TERMINAL.has(task.status)) watch(task.id);
}

function showPager() {
  const page = state.cursors.length;
  $("newer").disabled = page <= 1;
  $("older").disabled = !state.nextCursor;
  $("page-label").textContent = page > 1 || state.nextCursor ? `Page ${page}` : "";
}

async function refresh() {
  if (!getKey()) {
    $("tasks-status").textContent = "Enter your API key to see your videos.";
    return;
  }
  const cursor = state.cursors[state.cursors.length - 1];
  const query = `limit=${PAGE_SIZE}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`;
  try {
    const page = await call("GET", `v1/vidu/videos?${query}`);
    for (const id of [...state.tasks.keys()]) {
      if (!page.data.some((t) => t.id === id)) forget(id);
    }
    state.nextCursor = page.next_cursor;
    showList(page.data);
    showPager();
  } catch (err) {
    $("tasks-status").textContent = `Could not list your videos: ${err.message}`;
  }
}

// One list request for several tasks that finish together: their covers and tokens.
function refreshSoon() {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(() => {
    refresh();
    loadAccount();
  }, 300);
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

function forgetAll() {
  for (const id of [...state.tasks.keys()]) forget(id);
  state.cursors = [null];
  state.nextCursor = null;
  showPager();
}

// ---- the player -----------------------------------------------------------------------------------
function openPlayer(id, opener) {
  const entry = state.tasks.get(id);
  if (!entry || !entry.data.video_url) return;
  const task = entry.data;
  const video = $("player-video");
  video.src = task.video_url;
  if (task.cover_url) video.poster = task.cover_url;
  else video.removeAttribute("poster");
  video.setAttribute("aria-label", `Video: ${task.prompt || task.id}`);
  $("player-title").textContent = task.prompt ? truncate(task.prompt, 120) : task.id;
  $("player-meta").textContent = `${describe(task)} · ${task.id}`;
  $("player").dataset.id = id;
  state.opener = opener;
  $("player").showModal();
  video.focus();
}

function closePlayer() {
  const dialog = $("player");
  if (dialog.open) dialog.close();
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
            if (TERMINAL.has(task.status)) {
              refreshSoon(); // its cover and the key's usage
              return;
            }
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
    const body = formBody();
    const first = await imageValue("first");
    const last = await imageValue("last");
    if (first) body.first_image = first;
    if (last) body.last_image = last;
    const task = await call("POST", "v1/vidu/videos", body);
    const asked = { prompt: body.prompt, duration: body.duration, aspect_ratio: body.aspect_ratio,
      resolution: body.resolution, seed: body.seed === undefined ? null : body.seed };
    if (state.cursors.length > 1) {
      // A new task goes on the first page: show it there.
      state.cursors = [null];
      await refresh();
    }
    $("tasks").prepend(render({ ...asked, ...task }));
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

function useKey() {
  forgetAll();
  loadModels();
  loadAccount();
  refresh();
}

// ---- start ----------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = getKey();
  $("remember-key").checked = Boolean(localStorage.getItem(KEY_NAME));
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setKey($("api-key").value.trim(), $("remember-key").checked);
    useKey();
  });
  $("forget-key").addEventListener("click", () => {
    setKey("", false);
    $("api-key").value = "";
    forgetAll();
    $("account").textContent = "";
    $("tasks-status").textContent = "Key forgotten.";
  });
  $("create-form").addEventListener("submit", createTask);
  $("create-form").addEventListener("input", updateCode);
  $("create-form").addEventListener("change", updateCode);
  $("model").addEventListener("change", applyModel);
  $("first-file").addEventListener("change", () => preview("first"));
  $("last-file").addEventListener("change", () => preview("last"));
  for (const button of document.querySelectorAll("button.copy")) {
    button.addEventListener("click", () => copy(button.dataset.target, button.textContent.replace("Copy ", "")));
  }
  $("refresh").addEventListener("click", () => {
    refresh();
    loadAccount();
  });
  $("older").addEventListener("click", () => {
    if (!state.nextCursor) return;
    state.cursors.push(state.nextCursor);
    refresh().then(() => $("tasks-heading").scrollIntoView());
  });
  $("newer").addEventListener("click", () => {
    if (state.cursors.length <= 1) return;
    state.cursors.pop();
    refresh();
  });
  $("player-close").addEventListener("click", closePlayer);
  $("player").addEventListener("close", () => {
    const video = $("player-video");
    video.pause();
    video.removeAttribute("src");
    video.load();
    if (state.opener) state.opener.focus();
  });
  useKey();
});
