"""Helpers for the chat-page browser test: Debian's chromium through Playwright, and an engine double.

StagedEngine wraps the tiny LocalEngine and changes only what `submit` hands back:
- by default the real submission, paced (the tiny CPU model writes a whole answer in ~50 ms, faster than
  a browser paints; a real GPU answer arrives over seconds, which is what the page must show);
- with `script` set, a Submission that streams fixed text (hostile Markdown, an HTML document, an error)
  through the same routes, SSE framing and page code as a real answer.
Everything before `submit` (parsing, image decode, prompt encoding) runs for real, and `prompts` records
how many images each prompt carried.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from pixdesk.engine.events import Delta, Finish, Usage
from pixdesk.engine.sequence import Submission
from pixdesk.errors import PixdeskError

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "web"


def need_browser():
    """playwright's sync API, or skip (fail under CI=true: the page test must not vanish silently there)."""
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "playwright is not installed (pip install playwright)"
    if reason is None and not os.access(CHROMIUM, os.X_OK):
        reason = f"{CHROMIUM} is missing (apt-get install -y chromium)"
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but the browser test cannot run: {reason}")
        pytest.skip(reason)
    return sync_playwright


class Paced:
    """A real Submission whose deltas are handed on `pace_s` apart; `text` collects what was streamed."""

    def __init__(self, sub: Submission, pace_s: float):
        self.sub, self.pace_s = sub, pace_s
        self.text = ""

    def __getattr__(self, name):
        return getattr(self.sub, name)

    def cancel(self) -> None:
        self.sub.cancel()

    async def __aiter__(self):
        async for event in self.sub:
            if isinstance(event, Delta):
                await asyncio.sleep(self.pace_s)
                self.text += event.text
            yield event


def scripted(pieces: list, n_prompt: int, pace_s: float) -> Submission:
    """A Submission fed from the event loop: str pieces become deltas; a PixdeskError ends it as an error."""
    sub = Submission("scripted", lambda: None)

    async def feed() -> None:
        for n, piece in enumerate(pieces):
            await asyncio.sleep(pace_s)
            if sub.cancelled:
                return sub.put(Finish("cancelled", Usage(n_prompt, n)))
            if isinstance(piece, PixdeskError):
                return sub.put(Finish("error", Usage(n_prompt, n), error=piece))
            sub.put(Delta(piece, [0]))
        sub.put(Finish("stop", Usage(n_prompt, len(pieces))))

    sub.feeder = asyncio.get_running_loop().create_task(feed())  # held: the loop keeps weak task refs
    return sub


class StagedEngine:
    def __init__(self, engine, pace_s: float = 0.05):
        self.engine, self.pace_s = engine, pace_s
        self.script: list | None = None  # set: answer with these pieces instead of the model
        self.refuse: PixdeskError | None = None  # set: submit raises it (a refusal before streaming)
        self.prompts: list[int] = []  # images per submitted prompt
        self.answers: list[Paced] = []  # the real (paced) generations, in order

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def submit(self, prompt, params, **kw):
        self.prompts.append(len(prompt.images))
        if self.refuse is not None:
            raise self.refuse
        if self.script is not None:
            return scripted(self.script, len(prompt.ids), self.pace_s)
        self.answers.append(Paced(self.engine.submit(prompt, params, **kw), self.pace_s))
        return self.answers[-1]


def chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


# Page-side snippets (page.evaluate); `args` is what Python passes in.

PASTE_FILE = """([selector, b64, name, type]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name, { type: type || "image/png" }));
  document.querySelector(selector).dispatchEvent(
    new ClipboardEvent("paste", { clipboardData: dt, bubbles: true, cancelable: true }));
}"""

DROP_FILE = """([b64, name]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name, { type: "image/png" }));
  for (const type of ["dragenter", "dragover", "drop"])
    document.getElementById("conversation").dispatchEvent(
      new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
}"""

CLIPBOARD_WRITE_PNG = """async (b64) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const blob = new Blob([bytes], { type: "image/png" });
  await navigator.clipboard.write([new ClipboardItem({ "image/png": blob })]);
}"""

# Records the last answer's text length on every DOM change while that answer streams.
RECORD_ANSWER_LENGTHS = """() => {
  window.answerLengths = [];
  const conv = document.getElementById("conversation");
  new MutationObserver(() => {
    const turns = conv.querySelectorAll(".turn.assistant");
    const last = turns[turns.length - 1];
    const answer = last && last.dataset.state === "streaming" && last.querySelector(".answer");
    if (answer && !answer.querySelector(".thinking")) window.answerLengths.push(answer.textContent.length);
  }).observe(conv, { childList: true, subtree: true, characterData: true });
}"""

# Everything in the answers that could run script or leave the page.
ACTIVE_CONTENT = """() => {
  const answers = [...document.querySelectorAll(".turn.assistant .answer")];
  const all = answers.flatMap((a) => [...a.querySelectorAll("*")]);
  return {
    pwned: typeof window.pwned,
    elements: all.map((e) => e.tagName)
      .filter((t) => /^(script|img|iframe|object|embed|svg|style|link|meta|form|base)$/i.test(t)),
    handlers: all.flatMap((e) => [...e.attributes].filter((a) => /^on/i.test(a.name)).map((a) => a.name)),
    hrefs: all.filter((e) => e.hasAttribute("href")).map((e) => e.getAttribute("href")),
    rels: [...document.querySelectorAll(".answer a")].map((a) => a.rel),
    text: answers.map((a) => a.textContent).join("\\n"),
  };
}"""

# Renders each sample with the page's own markdown.js; reports exceptions, active content and the slowest.
RENDER_SAMPLES = """async (samples) => {
  const md = await import("/static/markdown.js");
  const INERT = new Set(("P BR H1 H2 H3 H4 H5 H6 UL OL LI BLOCKQUOTE HR DIV SPAN BUTTON PRE CODE " +
    "TABLE THEAD TBODY TR TH TD A STRONG EM DEL").split(" "));
  const out = { errors: [], active: [], slowest: 0 };
  for (const s of samples) {
    const t = performance.now();
    const box = document.createElement("div");
    try {
      box.append(md.renderMarkdown(s));
    } catch (e) {
      out.errors.push(`${e} :: ${JSON.stringify(s.slice(0, 80))}`);
    }
    out.slowest = Math.max(out.slowest, performance.now() - t);
    for (const e of box.querySelectorAll("*")) {
      if (!INERT.has(e.tagName)) out.active.push(e.tagName);
      for (const a of e.attributes) {
        const badHref = a.name === "href" && !/^https?:/.test(a.value);
        if (/^on/i.test(a.name) || a.name === "style" || badHref) out.active.push(a.name);
      }
    }
  }
  return out;
}"""


def markdown_samples(n: int, seed: int = 5) -> list[str]:
    """Random strings over Markdown's special characters and hostile snippets, plus pathological cases."""
    import random

    rng = random.Random(seed)
    alphabet = list("*_~`[]()<>!#-+|:\\ \n\n1.ab") + [
        "```", "~~~", "http://x.y/", "javascript:", "data:text/html,", "<script>", "<img src=x onerror=a()>",
        "> ", "- ", "1. ", "| a | b |\n|---|---|\n", "    ", "](", "**", "\\`",
    ]  # fmt: skip
    out = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 400))) for _ in range(n)]
    return out + [
        "*" * 20000, "_a " * 5000, "[" * 5000 + "](" * 5000, "`a``" * 3000, "> " * 3000 + "x",
        "# " + " " * 20000 + "#x", "```" + " " * 20000 + "`", "| a |\n|-" + " " * 20000 + "x",
        "[x](" + " " * 20000 + "y", "- " * 5000, "1. " * 5000, ("  " * 200 + "- x\n") * 50,
    ]  # fmt: skip
