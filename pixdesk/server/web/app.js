// The chat page: login with the one-time code, images in (paste, drop, pick), streamed answers out.
// Everything the model says is untrusted: it goes through markdown.js (DOM nodes, never HTML strings), and
// HTML documents are previewed only inside <iframe sandbox="allow-scripts"> (no allow-same-origin).

import * as api from "./api.js";
import { Turn, bindCopy, userTurn } from "./turns.js";

const MAX_IMAGES = 12; // the daemon's default images.max_images per request
const SENDABLE = new Set(["image/png", "image/jpeg", "image/webp", "image/gif"]);
const $ = (id) => document.getElementById(id);

const state = {
  model: "pixdesk",
  history: [], // OpenAI messages, sent whole each time (the daemon's prefix cache makes that cheap)
  attachments: [], // {name, url: data URL}
  htmlMode: false,
  busy: null, // the AbortController of the answer in flight
};

// ------------------------------------------------------------------------------------------------ login

async function start() {
  bindUi();
  const code = new URLSearchParams(location.hash.slice(1)).get("code");
  if (location.hash) history.replaceState(null, "", location.pathname + location.search); // drop the code
  let reason = "This page is not signed in.";
  if (code) {
    try {
      await api.exchange(code);
    } catch (err) {
      reason = err.status === 401
        ? "That login link was already used or has expired."
        : `Signing in failed: ${err.message}`;
    }
  }
  await checkSession(reason);
}

async function checkSession(reason) {
  let info;
  try {
    info = await api.session();
  } catch (err) {
    return showGate(err.message);
  }
  if (!info) return showGate(reason);
  state.model = info.model || state.model;
  $("model").textContent = info.model || (info.loading ? "loading…" : "no model");
  if (info.loading) {
    setState("loading");
    const demo = info.demo ? " (the built-in demo checkpoint)" : "";
    const doing = info.phase === "warm-up"
      ? "Compiling and warming up (seconds; about a minute on a first start)…"
      : `Loading the model… ${Math.round((info.progress || 0) * 100)}%`;
    showBanner("loading", `${doing}${demo}`);
    setTimeout(() => checkSession(reason), 1000);
    return;
  }
  if (!info.model) { // not loading and no model: the load failed
    setState("failed");
    showBanner("failed", "The model failed to load. ", [
      "See the daemon log (`pixdesk status`), then restart it.",
    ]);
    return;
  }
  setState("ready");
  if (info.demo) {
    showBanner("demo", "Demo checkpoint: ", [
      `${info.model} has random weights, so its answers are random text. `,
      "Point pixdesk at a real Pixtral checkpoint (--model DIR or model.path in config.toml) ",
      "for real answers.",
    ]);
  } else {
    $("banner").hidden = true;
  }
  $("question").focus();
}

function showGate(reason) {
  setState("login");
  $("gate-reason").textContent = reason;
  $("gate").hidden = false;
}

function setState(name) {
  document.body.dataset.state = name;
  updateSend();
}

function showBanner(kind, title, lines = []) {
  const b = $("banner");
  b.className = `banner banner-${kind}`;
  const strong = document.createElement("strong");
  strong.textContent = title;
  b.replaceChildren(strong, ...lines.map((l) => document.createTextNode(l)));
  b.hidden = false;
}

// ------------------------------------------------------------------------------------------------ images

async function addFiles(files) {
  const images = [...files].filter((f) => f.type.startsWith("image/"));
  if (!images.length) return false;
  for (const file of images) {
    if (state.attachments.length >= MAX_IMAGES) {
      status(`At most ${MAX_IMAGES} images per question.`);
      break;
    }
    try {
      state.attachments.push({ name: file.name || "pasted image", url: await toDataUrl(file) });
    } catch {
      status(`${file.name || "That image"} could not be read; use PNG, JPEG, WebP or GIF.`);
    }
  }
  renderAttachments();
  return true;
}

async function toDataUrl(file) {
  let blob = file;
  if (!SENDABLE.has(file.type)) blob = await reencode(file); // BMP, AVIF, … -> PNG, decoded by the browser
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

async function reencode(file) {
  const bitmap = await createImageBitmap(file);
  const canvas = document.createElement("canvas");
  [canvas.width, canvas.height] = [bitmap.width, bitmap.height];
  canvas.getContext("2d").drawImage(bitmap, 0, 0);
  return new Promise((resolve, reject) => {
    const done = (b) => (b ? resolve(b) : reject(new Error("the image could not be converted")));
    canvas.toBlob(done, "image/png");
  });
}

function renderAttachments() {
  const list = $("attachments");
  list.replaceChildren(
    ...state.attachments.map((a, k) => {
      const li = document.createElement("li");
      const img = document.createElement("img");
      img.src = a.url;
      img.alt = a.name;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "remove";
      remove.textContent = "×";
      remove.setAttribute("aria-label", `Remove ${a.name}`);
      remove.addEventListener("click", () => {
        state.attachments.splice(k, 1);
        renderAttachments();
        $("question").focus();
      });
      li.append(img, remove);
      return li;
    }),
  );
  list.hidden = !state.attachments.length;
  status(state.attachments.length ? `${state.attachments.length} image(s) attached` : "");
  updateSend();
}

// ------------------------------------------------------------------------------------------------ asking

async function send() {
  if (state.busy || document.body.dataset.state !== "ready") return;
  const text = $("question").value.trim();
  const images = state.attachments.slice();
  if (!text && !images.length) return status("Type a question or attach an image first.");
  if (state.htmlMode && !images.length) return status("Attach a screenshot or mockup to turn into HTML.");
  $("empty").hidden = true;
  $("question").value = "";
  state.attachments = [];
  renderAttachments();

  const parts = images.map((a) => ({ type: "image_url", image_url: { url: a.url } }));
  const asked = state.htmlMode
    ? ["Convert this image into an HTML document.", text].filter(Boolean).join("\n\n")
    : text;
  const textPart = asked ? [{ type: "text", text: asked }] : [];
  const user = { role: "user", content: parts.length ? [...parts, ...textPart] : asked }; // images first
  const userEl = userTurn(text, images, state.htmlMode);
  const turn = new Turn($("conversation"), state.htmlMode ? "html" : "chat");
  $("conversation").append(userEl, turn.el);
  turn.scrollIntoView();

  const ctl = new AbortController();
  setBusy(ctl);
  const history = state.history; // "New chat" during the answer swaps in a fresh array: this turn stays out
  history.push(user);
  try {
    if (state.htmlMode) await askHtml(turn, text, images, ctl.signal);
    else await askChat(turn, history, ctl.signal);
    history.push({ role: "assistant", content: turn.text });
    announce("Answer complete.");
  } catch (err) {
    if (ctl.signal.aborted && turn.text) {
      turn.stopped();
      history.push({ role: "assistant", content: turn.text }); // keep what arrived
    } else {
      history.pop(); // the question did not get an answer: it is not part of the conversation
      userEl.classList.add("dropped");
      const note = document.createElement("span");
      note.className = "dropped-note";
      note.textContent = "not kept in the conversation";
      userEl.append(note);
      if (ctl.signal.aborted) turn.stopped();
      else failed(turn, err, text, images);
    }
  } finally {
    setBusy(null);
  }
}

async function askChat(turn, messages, signal) {
  const body = { model: state.model, messages, stream_options: { include_usage: true } };
  for await (const chunk of api.chat(body, signal)) {
    const choice = chunk.choices && chunk.choices[0];
    if (choice && choice.delta && typeof choice.delta.content === "string") turn.append(choice.delta.content);
    if (choice && choice.finish_reason) turn.finish = choice.finish_reason;
    if (chunk.usage) turn.usage = chunk.usage;
  }
  turn.done();
}

async function askHtml(turn, question, images, signal) {
  const body = { model: state.model, images: images.map((a) => a.url), options: question ? { question } : {},
    stream_options: { include_usage: true } };
  for await (const chunk of api.task("html", body, signal)) {
    if (chunk.object === "task.chunk" && typeof chunk.delta === "string") turn.append(chunk.delta);
    if (chunk.object === "task.result") {
      turn.text = chunk.text || turn.text;
      turn.finish = chunk.finish_reason;
      turn.usage = chunk.usage;
      turn.done();
      const html = (chunk.rendered && chunk.rendered.html) || (chunk.data && chunk.data.html) || "";
      turn.warn(chunk.warnings || []);
      if (html) turn.showPreview(html);
      return;
    }
  }
  throw new api.ApiError(200, "incomplete", "The task ended without a result.");
}

const TITLES = {
  context_length_exceeded: "Too long for the model's context",
  too_many_images: "Too many images",
  image_too_large: "Image too large",
  invalid_image: "The image could not be read",
  unsupported_image_format: "Unsupported image format",
  request_too_large: "Request too large",
  overloaded: "The daemon is busy",
  model_loading: "The model is still loading",
  unreachable: "The daemon is not reachable",
  incomplete: "The answer was cut off",
};

function failed(turn, err, text, images) {
  if (err instanceof api.ApiError && err.status === 401) {
    const why = "Your session has ended (the daemon restarted or it expired). Run `pixdesk open` again.";
    turn.fail("Signed out", why);
    showGate("Your session has ended.");
    return;
  }
  const code = err instanceof api.ApiError ? err.code : "";
  let message = err.message || String(err);
  if (code === "too_many_images" || code === "context_length_exceeded") {
    message = message.replace(/[\s.]*$/, ". ") + "Start a new chat to drop the earlier turns.";
  }
  turn.fail(TITLES[code] || "Something went wrong", message, code);
  if (!$("question").value && !state.attachments.length) { // give the question back to try again
    $("question").value = text;
    state.attachments = images;
    renderAttachments();
  }
  announce(`Error: ${message}`);
}

// ------------------------------------------------------------------------------------------------ ui glue

function setBusy(ctl) {
  state.busy = ctl;
  $("stop").hidden = !ctl;
  $("send").hidden = !!ctl;
  updateSend();
  if (!ctl) $("question").focus();
}

function updateSend() {
  $("send").disabled = !!state.busy || document.body.dataset.state !== "ready";
}

function status(message) {
  $("composer-status").textContent = message;
}

function announce(message) {
  $("announcer").textContent = message;
}

function newChat() {
  if (state.busy) state.busy.abort();
  state.history = [];
  $("conversation").replaceChildren($("empty"));
  $("empty").hidden = false;
  status("");
  $("question").focus();
}

function bindUi() {
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });
  $("question").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && state.busy) state.busy.abort();
    if (e.altKey && (e.key === "n" || e.key === "N")) newChat();
  });
  $("stop").addEventListener("click", () => state.busy && state.busy.abort());
  $("new-chat").addEventListener("click", newChat);
  $("attach").addEventListener("click", () => $("file").click());
  $("file").addEventListener("change", async (e) => {
    await addFiles(e.target.files);
    e.target.value = "";
    $("question").focus();
  });
  $("html-mode").addEventListener("click", (e) => {
    state.htmlMode = !state.htmlMode;
    e.currentTarget.setAttribute("aria-pressed", String(state.htmlMode));
    $("question").placeholder = state.htmlMode
      ? "Optional notes for the HTML (e.g. “use a dark theme”)…"
      : "Ask about your image… (Enter to send, Shift+Enter for a new line)";
  });
  document.addEventListener("paste", (e) => {
    const files = e.clipboardData ? [...e.clipboardData.files] : [];
    if (files.some((f) => f.type.startsWith("image/"))) {
      e.preventDefault();
      addFiles(files);
    }
  });
  bindDrop();
  bindCopy($("conversation"));
}

function bindDrop() {
  const overlay = $("drop-overlay");
  let depth = 0;
  const hasFiles = (e) => e.dataTransfer && [...e.dataTransfer.types].includes("Files");
  window.addEventListener("dragenter", (e) => {
    if (!hasFiles(e)) return;
    depth++;
    overlay.hidden = false;
  });
  window.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) overlay.hidden = true;
  });
  window.addEventListener("dragover", (e) => {
    if (hasFiles(e)) e.preventDefault();
  });
  window.addEventListener("drop", (e) => {
    depth = 0;
    overlay.hidden = true;
    if (!hasFiles(e)) return;
    e.preventDefault();
    addFiles(e.dataTransfer.files);
  });
}

start();
