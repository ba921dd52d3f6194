// One question and its answer in the conversation. The answer is re-rendered from its whole text (at most
// once per animation frame) while it streams; nothing the model sends is ever parsed as HTML here.

import { preview } from "./api.js";
import { findHtmlDocument, renderMarkdown } from "./markdown.js";

const turns = new WeakMap(); // article element -> Turn, for the answer's Copy button

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function button(className, label, title) {
  const b = el("button", className, label);
  b.type = "button";
  if (title) b.title = title;
  return b;
}

export function userTurn(text, images, html) {
  const turn = el("article", "turn user");
  turn.setAttribute("aria-label", "You asked");
  const bubble = el("div", "bubble");
  if (images.length) {
    const thumbs = el("div", "thumbs");
    for (const a of images) {
      const img = el("img");
      img.src = a.url;
      img.alt = a.name;
      thumbs.append(img);
    }
    bubble.append(thumbs);
  }
  if (html) bubble.append(el("span", "badge", "Screenshot → HTML"));
  if (text) bubble.append(el("p", "user-text", text));
  turn.append(bubble);
  return turn;
}

export class Turn {
  constructor(scroller, kind) {
    this.scroller = scroller;
    this.kind = kind; // "chat" | "html"
    this.text = "";
    this.finish = null;
    this.usage = null;
    this.t0 = performance.now();
    this.frame = 0;
    this.preview = null;
    this.el = el("article", "turn assistant");
    this.el.setAttribute("aria-label", "pixdesk answered");
    this.answer = el("div", "answer markdown");
    this.answer.append(el("p", "thinking", kind === "html" ? "Building the page…" : "Thinking…"));
    this.footer = el("footer", "meta");
    this.footer.hidden = true;
    this.el.append(this.answer, this.footer);
    this.setState("streaming");
    turns.set(this.el, this);
  }

  setState(name) {
    this.el.dataset.state = name;
    this.el.setAttribute("aria-busy", String(name === "streaming"));
  }

  append(piece) {
    if (!piece) return;
    this.text += piece;
    if (!this.frame) this.frame = requestAnimationFrame(() => this.render());
  }

  render() {
    cancelAnimationFrame(this.frame);
    this.frame = 0;
    const s = this.scroller;
    const follow = s.scrollHeight - s.scrollTop - s.clientHeight < 96;
    this.answer.replaceChildren(renderMarkdown(this.text));
    if (follow) s.scrollTop = s.scrollHeight;
  }

  scrollIntoView() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  done() {
    this.render();
    if (!this.text.trim()) this.answer.replaceChildren(el("p", "muted", "(The model gave an empty answer.)"));
    this.setState("done");
    this.meta();
  }

  stopped() {
    this.render();
    if (!this.text) this.answer.replaceChildren();
    this.setState("stopped");
    this.meta("Stopped.");
  }

  fail(title, message, code) {
    this.render();
    if (!this.text) this.answer.replaceChildren();
    this.setState("error");
    const box = el("div", "notice error");
    box.setAttribute("role", "alert");
    const head = el("div", "notice-head");
    head.append(el("strong", null, title));
    if (code) head.append(el("code", "error-code", code));
    box.append(head, el("div", null, message));
    this.el.insertBefore(box, this.footer);
  }

  warn(warnings) {
    if (!warnings.length) return;
    const box = el("details", "notice warn");
    box.append(el("summary", null, `${warnings.length} note(s) on the HTML`));
    const list = el("ul");
    for (const w of warnings) list.append(el("li", null, String(w)));
    box.append(list);
    this.el.insertBefore(box, this.footer);
  }

  meta(note) {
    const parts = [];
    const u = this.usage;
    const secs = (performance.now() - this.t0) / 1000;
    if (u && u.completion_tokens) {
      parts.push(`${u.completion_tokens} tokens`, `${(u.completion_tokens / secs).toFixed(1)} tok/s`);
    }
    parts.push(`${secs.toFixed(1)} s`);
    if (this.finish === "length") parts.push("cut at the token limit");
    if (note) parts.unshift(note);
    this.footer.replaceChildren(el("span", "stats", parts.join(" · ")));
    if (this.text) {
      this.footer.append(button("ghost small copy-answer", "Copy", "Copy the answer as Markdown"));
    }
    const html = this.kind === "chat" && findHtmlDocument(this.text);
    if (html) {
      const toggle = button("ghost small", "Preview HTML", "Show the HTML document in a sandboxed frame");
      toggle.setAttribute("aria-expanded", "false");
      toggle.addEventListener("click", () => {
        const open = !this.preview || this.preview.hidden;
        if (open) this.showPreview(html);
        else this.preview.hidden = true;
        toggle.setAttribute("aria-expanded", String(open));
      });
      this.footer.append(toggle);
    }
    this.footer.hidden = false;
  }

  /** The document in a sandboxed frame served from /preview/{id} with its own CSP (`sandbox allow-scripts`,
   *  inline styles and scripts, no network): an opaque origin, so no cookie, no API, no access to this page. */
  showPreview(html) {
    if (this.preview) {
      this.preview.hidden = false;
      return;
    }
    const box = el("section", "preview");
    box.setAttribute("aria-label", "HTML preview");
    const bar = el("div", "preview-bar");
    const note = el("span", "preview-note", "sandboxed: no network, no access to pixdesk");
    bar.append(el("span", "preview-title", "Preview"), note);
    const download = el("a", "button ghost small", "Download .html");
    download.href = URL.createObjectURL(new Blob([html], { type: "text/html" }));
    download.download = "pixdesk-page.html";
    bar.append(download);
    const frame = el("iframe");
    frame.setAttribute("sandbox", "allow-scripts");
    frame.setAttribute("referrerpolicy", "no-referrer");
    frame.title = "HTML preview (sandboxed)";
    preview(html).then(
      (url) => { frame.src = url; },
      (err) => { note.textContent = `preview unavailable: ${err.message}`; },
    );
    box.append(bar, frame);
    if (this.kind === "html") { // the page is the result: its source folds away under the preview
      const source = el("details", "source");
      source.append(el("summary", null, "HTML source"));
      this.el.replaceChild(source, this.answer);
      source.append(this.answer);
      this.el.insertBefore(box, source);
    } else {
      this.el.insertBefore(box, this.footer);
    }
    this.preview = box;
  }
}

/** Copy buttons of code blocks and answers (one listener for the whole conversation). */
export function bindCopy(container) {
  container.addEventListener("click", async (e) => {
    const b = e.target.closest("button.copy-code, button.copy-answer");
    if (!b) return;
    const text = b.classList.contains("copy-code")
      ? b.closest(".code-block").querySelector("code").textContent
      : turns.get(b.closest(".turn")).text;
    const label = b.textContent;
    b.textContent = (await copy(text)) ? "Copied" : "Copy failed";
    setTimeout(() => (b.textContent = label), 1500);
  });
}

async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = el("textarea", "visually-hidden");
    area.value = text;
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}
