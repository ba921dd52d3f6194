"""html: a screenshot or mockup -> one self-contained HTML document (inline CSS; Tailwind via CDN on request).

The document is taken from a ```html fence or from the bare answer (prose before `<` and after `</html>` is
dropped), wrapped into <html><head><body> when the model gave a fragment, then checked with the stdlib
HTMLParser: tags balanced, some elements present, nothing loaded from elsewhere but the Tailwind CDN.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

from pixdesk.tasks.base import Task, TaskOptions, TaskResult, fenced_blocks

TAILWIND_CDN = "https://cdn.tailwindcss.com"
VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())
# Elements whose end tag HTML lets the author leave out; an unclosed one is not a problem.
OPTIONAL_END = frozenset("html head body p li dt dd option tr td th thead tbody tfoot colgroup".split())

_BASE = (
    "You turn screenshots and UI mockups into HTML. Recreate the image as one complete, self-contained HTML "
    'document: <!DOCTYPE html>, <html>, <head> with <meta charset="utf-8"> and a <title>, and <body>. Match '
    "the layout, text, colors and spacing you see. Use semantic elements and plain boxes for images.\n"
    "Answer with the HTML document only, in one ```html code block, with no explanation."
)
SYSTEM_INLINE = _BASE + "\nPut all CSS in one <style> element in <head>; load nothing from other sites."
SYSTEM_TAILWIND = _BASE + (
    "\nStyle with Tailwind utility classes; load Tailwind with "
    f'<script src="{TAILWIND_CDN}"></script> in <head> and load nothing else from other sites.'
)


def extract_html(text: str) -> tuple[str, list[str]]:
    """The HTML part of an answer, and notes on what was dropped around it."""
    notes = []
    blocks = [body for lang, body in fenced_blocks(text) if lang in ("html", "htm", "") and "<" in body]
    if blocks:
        body = max(blocks, key=lambda b: ("<html" in b.lower(), len(b)))
        if len(blocks) > 1:
            which = "document" if "<html" in body.lower() else "longest"
            notes.append(f"the answer had {len(blocks)} code blocks; used the {which}")
        text = body
    start = _first_tag(text)
    if start < 0:
        return "", notes + ["the answer contains no HTML"]
    end_m = list(re.finditer(r"</html\s*>", text, re.I))
    end = end_m[-1].end() if end_m else text.rfind(">") + 1
    if text[:start].strip():
        notes.append("text before the HTML was dropped")
    if text[end:].strip():
        notes.append("text after the HTML was dropped")
    return text[start:end].strip(), notes


def _first_tag(text: str) -> int:
    m = re.search(r"<!doctype|<html|<(?=[a-zA-Z!])", text, re.I)
    return m.start() if m else -1


def complete_document(html: str, *, tailwind: bool) -> str:
    """A fragment becomes a full document; a document missing the Tailwind script (when asked for) gets it."""
    if not re.search(r"<html[\s>]", html, re.I):
        head = '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n<title>Page</title>\n</head>\n'
        html = f"{head}<body>\n{html}\n</body>\n</html>"
    if tailwind and TAILWIND_CDN not in html:
        script = f'<script src="{TAILWIND_CDN}"></script>'
        html, n = re.subn(r"</head\s*>", script + "\n</head>", html, count=1, flags=re.I)
        if not n:
            html = re.sub(r"(<html[^>]*>)", r"\1\n<head>" + script + "</head>", html, count=1, flags=re.I)
    return html


class _Checker(HTMLParser):
    def __init__(self, tailwind: bool):
        super().__init__(convert_charrefs=True)
        self.tailwind = tailwind
        self.stack: list[str] = []
        self.seen: set[str] = set()
        self.problems: list[str] = []
        self.elements = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements += 1
        self.seen.add(tag)
        a = dict(attrs)
        src = a.get("src") if tag in ("script", "img", "iframe") else a.get("href") if tag == "link" else None
        if src and re.match(r"(https?:)?//", src) and not (self.tailwind and src.startswith(TAILWIND_CDN)):
            self.problems.append(f"<{tag}> loads {src}; the document is not self-contained")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if tag not in self.stack:
            self.problems.append(f"</{tag}> at line {self.getpos()[0]} closes nothing")
            return
        while self.stack:  # close what the author left open in between
            top = self.stack.pop()
            if top == tag:
                return
            if top not in OPTIONAL_END:
                self.problems.append(f"<{top}> is not closed before </{tag}> (line {self.getpos()[0]})")


def check_html(html: str, *, tailwind: bool = False) -> list[str]:
    """Problems a browser would paper over but a user should hear about; [] for a well-formed document."""
    checker = _Checker(tailwind)
    checker.feed(html)
    checker.close()
    problems = checker.problems
    problems += [f"<{t}> is never closed" for t in checker.stack if t not in OPTIONAL_END]
    if checker.elements == 0:
        problems.append("the document has no elements")
    elif "html" not in checker.seen and "body" not in checker.seen:
        problems.append("the document has neither <html> nor <body>")
    return problems


def postprocess(text: str, options: TaskOptions) -> TaskResult:
    fragment, notes = extract_html(text)
    if not fragment:
        return TaskResult("html", text, {"html": "", "problems": notes}, {}, notes)
    doc = complete_document(fragment, tailwind=options.tailwind)
    problems = check_html(doc, tailwind=options.tailwind)
    return TaskResult("html", text, {"html": doc, "problems": problems}, {"html": doc}, notes + problems)


TASK = Task(
    name="html",
    description="Screenshot or mockup -> one self-contained HTML document (inline CSS, or Tailwind via CDN)",
    system_prompt=SYSTEM_INLINE,
    instruction="Convert this image into an HTML document.",
    postprocess=postprocess,
    max_tokens=4096,
    system_for=lambda o: SYSTEM_TAILWIND if o.tailwind else SYSTEM_INLINE,
)
