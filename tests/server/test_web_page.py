"""The chat page in a real browser (headless Debian chromium via Playwright) against a real uvicorn server.

Covers issue 5 and SECURITY.md row 31's page half: login with a one-time code (fragment removed, HttpOnly
cookie), images pasted (synthetic ClipboardEvent and a real Ctrl+V) and sent as image parts, the answer
painted incrementally while it streams, the whole history sent each turn, hostile Markdown rendered inert,
HTML previews sandboxed, errors shown. Screenshots land in artifacts/web/.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time

import pytest

from pixdesk.engine.backend import LocalEngine
from pixdesk.engine.scheduler_config import SchedulerConfig
from pixdesk.errors import ContextLengthExceeded, InternalError
from pixdesk.server.app import create_app
from pixdesk.weights.checkpoint import load_checkpoint
from tests.server.conftest import API_KEY, Live, ServerThread, make_settings, png
from tests.server.web_helpers import (
    ACTIVE_CONTENT,
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    CLIPBOARD_WRITE_PNG,
    DROP_FILE,
    PASTE_FILE,
    RECORD_ANSWER_LENGTHS,
    RENDER_SAMPLES,
    StagedEngine,
    chunks,
    markdown_samples,
    need_browser,
)

HOSTILE = (
    "Here is the result:\n\n<script>window.pwned=1</script>\n\n"
    '<img src=x onerror="window.pwned=2">\n\n'
    "A [link](javascript:alert(1)), a [data link](data:text/html,<script>alert(1)</script>), "
    '<a href="javascript:alert(3)">raw anchor</a> and a [real one](https://example.com/docs).\n\n'
    '```html\n<button onclick="window.pwned=5">go</button>\n```\n\n'
    "| a | b |\n|---|---|\n| <b>x</b> | **y** |\n"
)
RICH = (
    "## Steps\n\n1. Open **Settings**\n2. Pick *Display*:\n   - `scale` to 125%\n   - ~~night light~~ off\n"
    "3. Done\n\n> Quoted *note*\n\n| Item | Price |\n|:-----|------:|\n| Tea | 2.50 |\n| Cake | 4.00 |\n\n"
    "```python\nprint(sum([2.50, 4.00]))\n```\n\n"
    "See https://example.org/help. snake_case_name stays.\n\n---\nLine one\nline two"
)
PAGE_DOC = (
    "```html\n<!DOCTYPE html>\n<html><head><title>Plans</title><style>h1{color:#c00}</style></head>\n"
    "<body><h1>Pricing</h1><p>Pro plan, 12 EUR</p>\n"
    "<script>top.pwned = 3; parent.document.title = 'pwned'</script>\n"
    '<img src="x" onerror="top.pwned = 4"></body></html>\n```'
)


@pytest.fixture(scope="module")
def sync_playwright():
    return need_browser()


@pytest.fixture(scope="module")
def site(tiny_dir):
    """The tiny model as the demo checkpoint (so the page shows its banner), staged for the browser.
    The context fits the html task's default max_tokens (4096), which the task route does not clamp."""
    settings = make_settings()
    config = SchedulerConfig(max_batch=4, max_context=4608, max_queue=16, per_client_active=16)
    engine = LocalEngine(load_checkpoint(tiny_dir), config, images=settings.images, name="pixdesk-demo-tiny",
                         demo=True).start()  # fmt: skip
    staged = StagedEngine(engine)
    with ServerThread(create_app(staged, settings, API_KEY), settings) as srv:
        yield Live(srv.port, engine, None, None), staged
    engine.stop()


@pytest.fixture(scope="module")
def browser(sync_playwright):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def staged(site):
    live, staged = site
    staged.script, staged.refuse = None, None
    yield staged
    staged.script, staged.refuse = None, None


def open_page(browser, live, *, logged_in=True, fragment=None):
    ctx = browser.new_context(viewport={"width": 1100, "height": 760}, color_scheme="light")
    ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=live.url)
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: "Content Security" in m.text and errors.append(m.text))
    page.script_errors = errors
    if logged_in:
        status, _, body = live.request("POST", "/auth/code", {})
        assert status == 200, body
        page.goto(body["url"])
        page.wait_for_selector("body[data-state=ready]", timeout=10_000)
    else:
        page.goto(live.url + "/" + (fragment or ""))
    return page


def ask(page, question: str, n: int) -> dict:
    """Type and send; wait until the n-th answer is finished; returns its state and text."""
    page.fill("#question", question)
    page.press("#question", "Enter")
    turn = page.locator(".turn.assistant").nth(n - 1)
    done = "(t) => !!t && t.dataset.state !== 'streaming'"
    until(page, f"() => ({done})(document.querySelectorAll('.turn.assistant')[{n - 1}])", 20)
    return {"state": turn.get_attribute("data-state"), "text": turn.locator(".answer").inner_text()}


def until(page, js: str, timeout: float = 10.0) -> None:
    """Poll a page function until it is truthy (wait_for_function evals a string: the page CSP forbids it)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(js):
        assert time.monotonic() < deadline, f"timed out waiting for {js}"
        page.wait_for_timeout(25)


def paste_a(page, data: bytes, name="clip.png", mime="image/png") -> None:
    page.evaluate(PASTE_FILE, ["#question", base64.b64encode(data).decode(), name, mime])


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / name))


def test_login_paste_stream_multi_turn(browser, site, staged):
    live, _ = site
    page = open_page(browser, live)
    assert page.evaluate("location.hash") == "" and "code=" not in page.url  # the code left the URL at once
    assert "pixdesk_session" not in page.evaluate("document.cookie")  # HttpOnly: page script cannot read it
    assert API_KEY not in page.content()
    banner = page.locator("#banner")
    assert banner.is_visible() and "random weights" in banner.inner_text()
    assert page.locator("#model").inner_text() == "pixdesk-demo-tiny"

    paste_a(page, png(64, 48, (220, 40, 40)))  # recipe A: synthetic paste event with a File
    page.evaluate(CLIPBOARD_WRITE_PNG, base64.b64encode(png(48, 64, (40, 90, 220))).decode())
    page.click("#question")
    page.keyboard.press("Control+V")  # recipe B: a trusted paste from the real clipboard
    until(page, "() => document.querySelectorAll('#attachments img').length === 2")

    bodies = []
    page.on("request", lambda r: bodies.append((r.url, r.post_data)) if r.method == "POST" else None)
    page.evaluate(RECORD_ANSWER_LENGTHS)
    before = live.counters()
    first = ask(page, "What is in these two pictures?", 1)
    assert first["state"] == "done", first
    lengths = [n for n in page.evaluate("window.answerLengths") if n > 0]
    assert len(set(lengths)) >= 2, lengths  # painted at least twice while it streamed
    assert staged.prompts[-1] == 2  # both image parts reached the prompt ...
    assert live.counters()["vision_calls"] - before["vision_calls"] == 2  # ... and the vision encoder
    sent = json.loads(bodies[-1][1])
    assert bodies[-1][0].endswith("/v1/chat/completions") and sent["stream"] is True
    parts = sent["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    assert all(p["image_url"]["url"].startswith("data:image/png;base64,") for p in parts[:2])
    assert page.locator("#attachments img").count() == 0
    shot(page, "chat.png")

    second = ask(page, "And the second one?", 2)  # multi-turn: the whole history goes again
    assert second["state"] == "done"
    roles = [m["role"] for m in json.loads(bodies[-1][1])["messages"]]
    assert roles == ["user", "assistant", "user"] and staged.prompts[-1] == 2
    replayed = json.loads(bodies[-1][1])["messages"][1]["content"]
    assert replayed and replayed == staged.answers[-2].text  # the first answer goes back verbatim
    page.emulate_media(color_scheme="dark")
    shot(page, "chat-dark.png")
    assert page.script_errors == []
    page.context.close()


def test_hostile_answer_renders_inert(browser, site, staged):
    live, _ = site
    page = open_page(browser, live)
    staged.script = chunks(HOSTILE, 9)
    staged.pace_s = 0.01
    try:
        answer = ask(page, "Describe it", 1)
    finally:
        staged.pace_s = 0.05
    assert answer["state"] == "done"
    page.wait_for_timeout(200)  # an onerror or a late script would have run by now
    found = page.evaluate(ACTIVE_CONTENT)
    assert found["pwned"] == "undefined"
    assert found["elements"] == [] and found["handlers"] == []
    assert found["hrefs"] == ["https://example.com/docs"]
    assert found["rels"] == ["noopener noreferrer nofollow"]
    assert "<script>window.pwned=1</script>" in found["text"]  # shown as text, not run
    assert '<img src=x onerror="window.pwned=2">' in found["text"]
    assert page.locator(".blocked-link", has_text="link").count() >= 2
    assert page.locator(".answer table td").first.inner_text() == "<b>x</b>"

    code = page.locator(".code-block").first
    assert code.locator(".code-lang").inner_text() == "html"
    code.locator("button.copy-code").click()
    until(page, "() => document.querySelector('button.copy-code').textContent === 'Copied'")
    assert page.evaluate("navigator.clipboard.readText()") == '<button onclick="window.pwned=5">go</button>'
    assert page.locator("button", has_text="Preview HTML").count() == 0  # a fragment, not a document
    shot(page, "hostile.png")
    assert page.evaluate("typeof window.pwned") == "undefined" and page.script_errors == []
    page.context.close()


def test_markdown_structure(browser, site, staged):
    live, _ = site
    page = open_page(browser, live)
    staged.script = chunks(RICH, 16)
    assert ask(page, "How do I change the display?", 1)["state"] == "done"
    a = page.locator(".answer").first
    assert a.locator("h2").inner_text() == "Steps"
    assert a.locator("ol > li").count() == 3 and a.locator("ol > li").nth(1).locator("ul > li").count() == 2
    assert a.locator("ol strong").inner_text() == "Settings"
    assert a.locator("ol em").first.inner_text() == "Display"
    assert a.locator("li code").inner_text() == "scale" and a.locator("del").inner_text() == "night light"
    assert a.locator("blockquote em").inner_text() == "note"
    assert a.locator("th").all_inner_texts() == ["Item", "Price"] and a.locator("td.align-right").count() == 2
    assert a.locator(".code-block code").inner_text() == "print(sum([2.50, 4.00]))"
    assert a.locator("a").get_attribute("href") == "https://example.org/help"  # trailing dot left outside
    assert "snake_case_name stays." in a.inner_text() and a.locator("hr").count() == 1
    assert a.locator("p br").count() == 1  # a single newline is a line break
    shot(page, "markdown.png")

    found = page.evaluate(RENDER_SAMPLES, markdown_samples(1500))
    assert found["errors"] == [] and found["active"] == []
    assert found["slowest"] < 250, found["slowest"]  # ms for one sample: hostile text cannot freeze the tab
    page.context.close()


def test_html_task_preview_is_sandboxed(browser, site, staged):
    live, _ = site
    page = open_page(browser, live)
    page.click("#html-mode")
    assert page.get_attribute("#html-mode", "aria-pressed") == "true"
    page.evaluate(DROP_FILE, [base64.b64encode(png(80, 60, (30, 160, 90))).decode(), "mockup.png"])  # dropped
    assert page.locator("#drop-overlay").is_hidden()
    until(page, "() => document.querySelectorAll('#attachments img').length === 1")
    staged.script = chunks(PAGE_DOC, 24)
    urls = []
    page.on("request", lambda r: urls.append(r.url) if r.method == "POST" else None)
    answer = ask(page, "Use a light theme", 1)
    assert answer["state"] == "done" and staged.prompts[-1] == 1
    posts = [u.split("/", 3)[-1] for u in urls]
    assert posts[:1] == ["v1/tasks/html"]  # then the page stores the result for its preview frame

    frame = page.locator(".preview iframe")
    frame.wait_for()
    assert frame.get_attribute("sandbox") == "allow-scripts"  # never allow-same-origin
    framed = "() => (document.querySelector('.preview iframe').src || '').includes('/preview/')"
    until(page, framed)
    heading = page.frame_locator(".preview iframe").locator("h1")
    assert heading.inner_text() == "Pricing"
    # Served with its own sandbox CSP, so the document's inline <style> applies (a srcdoc frame would not).
    assert heading.evaluate("h => getComputedStyle(h).color") == "rgb(204, 0, 0)"
    page.wait_for_timeout(300)
    assert page.evaluate("[typeof window.pwned, document.title]") == ["undefined", "pixdesk"]
    assert page.locator(".preview a[download]").count() == 1
    shot(page, "html-preview.png")

    # A chat answer that holds a document gets an opt-in preview, sandboxed the same way.
    page.click("#html-mode")
    answer = ask(page, "Now as a chat answer", 2)
    page.locator(".turn.assistant").nth(1).locator("button", has_text="Preview HTML").click()
    second = page.locator(".turn.assistant").nth(1).locator(".preview iframe")
    assert second.get_attribute("sandbox") == "allow-scripts"
    page.wait_for_timeout(200)
    assert page.evaluate("typeof window.pwned") == "undefined"
    page.context.close()


def test_errors_are_shown_and_the_question_comes_back(browser, site, staged):
    live, _ = site
    page = open_page(browser, live)
    staged.refuse = ContextLengthExceeded("the prompt has 900 tokens but the context holds 512")
    picked = {"name": "shot.png", "mimeType": "image/png", "buffer": png(30, 30, (90, 90, 90))}
    page.set_input_files("#file", files=[picked])  # the file picker behind the + button
    until(page, "() => document.querySelectorAll('#attachments img').length === 1")
    answer = ask(page, "A very long question", 1)
    assert answer["state"] == "error"
    alert = page.locator(".turn.assistant [role=alert]")
    assert "context_length_exceeded" in alert.inner_text() and "900 tokens" in alert.inner_text()
    assert page.input_value("#question") == "A very long question"  # given back to edit and resend ...
    assert page.locator("#attachments img").count() == 1  # ... with its image
    assert page.locator(".turn.user.dropped").count() == 1

    staged.refuse = None
    staged.script = ["Partial ", "answer", InternalError("internal error; see the daemon log")]
    answer = ask(page, "Try again", 2)
    assert answer["state"] == "error" and "Partial answer" in answer["text"]
    assert "internal error" in page.locator(".turn.assistant").nth(1).locator("[role=alert]").inner_text()
    shot(page, "errors.png")
    page.context.close()


def test_other_image_types_become_png_and_can_be_removed(browser, site):
    live, _ = site
    page = open_page(browser, live)
    paste_a(page, png(20, 10, fmt="BMP"), "old.bmp", "image/bmp")  # the daemon refuses BMP (415) ...
    until(page, "() => document.querySelectorAll('#attachments img').length === 1")
    assert page.get_attribute("#attachments img", "src").startswith("data:image/png;base64,")  # ... so: PNG
    page.click("#attachments button.remove")
    assert page.locator("#attachments").is_hidden()
    page.context.close()


def test_waits_for_the_model_to_load(browser, tiny_dir):
    """Served by a loader (as the daemon is): the page says it is loading, then ready, without a reload."""
    release = threading.Event()
    settings = make_settings()

    def load(progress):
        progress(0.5)
        assert release.wait(20)
        config = SchedulerConfig(max_batch=1, max_context=512, max_queue=4, per_client_active=4)
        ckpt = load_checkpoint(tiny_dir)
        return LocalEngine(ckpt, config, images=settings.images, name="pixdesk-demo-tiny", demo=True)

    load.demo = True
    with ServerThread(create_app(load, settings, API_KEY), settings) as srv, _released(release):
        live = Live(srv.port, None, None, None)
        code = live.request("POST", "/auth/code", {})[2]["url"]
        page = browser.new_context(viewport={"width": 1100, "height": 500}).new_page()
        page.goto(code)
        page.wait_for_selector("body[data-state=loading]")
        assert "Loading the model… 50%" in page.locator("#banner").inner_text()
        assert page.locator("#send").is_disabled()
        shot(page, "loading.png")
        release.set()
        page.wait_for_selector("body[data-state=ready]", timeout=10_000)
        assert "random weights" in page.locator("#banner").inner_text()
        assert page.locator("#send").is_enabled()
        page.context.close()


@contextlib.contextmanager
def _released(event: threading.Event):
    try:
        yield
    finally:
        event.set()  # never leave the loader thread waiting


def test_login_gate(browser, site):
    live, _ = site
    page = open_page(browser, live, logged_in=False, fragment="#code=spent-or-made-up")
    page.wait_for_selector("body[data-state=login]")
    assert page.evaluate("location.hash") == ""
    gate = page.locator("#gate")
    assert gate.is_visible() and "already used or has expired" in gate.inner_text()
    assert "pixdesk open" in gate.inner_text()
    assert page.locator("#send").is_disabled()
    shot(page, "login.png")
    page.goto(live.url + "/")
    page.wait_for_selector("body[data-state=login]")
    assert "not signed in" in page.locator("#gate").inner_text()
    page.context.close()
