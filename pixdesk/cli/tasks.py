"""`pixdesk html | chart | receipt`: one image through a task recipe, the rendered form on stdout.

`receipt DIR` hands the folder to cli/batch.py (resumable JSONL, batch priority).
"""

from __future__ import annotations

import argparse
import html as html_lib
import os
import tempfile
import time
import webbrowser
from pathlib import Path

from pixdesk.cli.common import (
    copy_to_clipboard,
    engine_flags,
    err,
    out,
    sampling_flags,
    settings_from,
    warn_all,
)
from pixdesk.cli.runner import open_runner
from pixdesk.cli.sources import capture_flags, chosen_mode, gather, read_files
from pixdesk.config import cache_dir
from pixdesk.errors import InvalidRequest

FORMATS = {"md": "markdown", "csv": "csv", "json": "json"}
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
PREVIEW = (
    '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>pixdesk preview</title>\n'
    f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n</head><body style="margin:0">\n'
    '<iframe sandbox srcdoc="{doc}" style="border:0;width:100%;height:100vh"></iframe>\n</body></html>\n'
)


def _common(p: argparse.ArgumentParser, image_help: str) -> None:
    engine_flags(p)
    sampling_flags(p, max_tokens=None)
    p.add_argument("--instructions", metavar="TEXT", help="extra instructions appended to the task prompt")
    p.add_argument("image", nargs="?", metavar="IMAGE", help=image_help)
    p.add_argument("--screenshot", action="store_true", help="capture the screen instead of reading IMAGE")
    capture_flags(p)
    p.add_argument("--clipboard", action="store_true", help="the image on the clipboard instead of IMAGE")


def add_parsers(sub) -> None:
    p = sub.add_parser("html", help="screenshot or mockup -> one self-contained HTML document")
    _common(p, "the screenshot or mockup")
    p.add_argument("-o", "--output", metavar="OUT.html", type=Path, help="write the document here")
    p.add_argument("--tailwind", action="store_true", help="allow Tailwind classes (CDN script in <head>)")
    p.add_argument("--copy", action="store_true", help="also put the HTML on the clipboard")
    p.add_argument("--open", action="store_true", help="preview it in the browser (sandboxed, no scripts)")
    p.set_defaults(run=cmd_html)
    p = sub.add_parser("chart", help="chart image -> its data as a Markdown table, CSV or JSON")
    _common(p, "the chart")
    p.add_argument("--format", choices=FORMATS, default="md", help="output form (default md)")
    p.set_defaults(run=cmd_chart)
    p = sub.add_parser("receipt", help="receipt image -> JSON; a folder of receipts -> JSON Lines, resumable")
    _common(p, "a receipt image, or a folder of them")
    p.add_argument(
        "--format", choices=FORMATS, default="json", help="output form for one image (default json)"
    )
    p.add_argument(
        "--jsonl",
        metavar="OUT.jsonl",
        type=Path,
        help="folder mode: one line per receipt here; rerunning skips the ones already in it",
    )
    p.add_argument("--jobs", type=int, default=2, help="folder mode: receipts in flight at once (default 2)")
    p.set_defaults(run=cmd_receipt)


def options_from(ns: argparse.Namespace, **extra) -> dict:
    return {
        "max_tokens": ns.max_tokens,
        "temperature": ns.temperature,
        "seed": ns.seed,
        "question": ns.instructions,
        **extra,
    }


def run_single(ns: argparse.Namespace, name: str, **extra) -> dict:
    """One image (file, screen or clipboard) through task `name`; warnings to stderr; the result dict."""
    settings = settings_from(ns)
    mode = chosen_mode(ns, "full" if ns.screenshot else None)
    sources = [bool(ns.image), bool(mode), ns.clipboard]
    if sum(sources) != 1:
        raise InvalidRequest(f"{name} takes one image: give IMAGE, or --screenshot, or --clipboard")
    read = read_files([ns.image] if ns.image else [], settings)
    runner = open_runner(ns, settings)
    try:
        images = gather(ns, settings, read, runner.max_image_size, screen_mode=mode)
        result = next(iter(runner.task(name, images, options_from(ns, **extra))))
    finally:
        runner.close()
    warn_all(result.get("warnings") or [])
    if result.get("finish_reason") == "length":
        err("pixdesk: note: the answer hit --max-tokens; raise it for a complete result")
    return result


def _rendered(result: dict, key: str, name: str) -> str:
    text = (result.get("rendered") or {}).get(key)
    if not text:
        raise InvalidRequest(
            f"the model's answer has no {key} form for the {name} task (see the warnings above); "
            "try a clearer image or more --max-tokens"
        )
    return text if text.endswith("\n") else text + "\n"


def cmd_html(ns: argparse.Namespace) -> int:
    result = run_single(ns, "html", tailwind=ns.tailwind or None)
    doc = _rendered(result, "html", "html")
    if ns.output:
        _write_atomic(ns.output, doc)
        err(f"pixdesk: wrote {ns.output}")
    else:
        out(doc)
    if ns.copy:
        copy_to_clipboard(doc)
        err("pixdesk: the HTML is on the clipboard")
    if ns.open:
        preview = _preview_file(doc)
        if not webbrowser.open(preview.as_uri()):
            err(f"pixdesk: no browser found; open {preview}")
    return 0


def cmd_chart(ns: argparse.Namespace) -> int:
    out(_rendered(run_single(ns, "chart"), FORMATS[ns.format], "chart"))
    return 0


def cmd_receipt(ns: argparse.Namespace) -> int:
    if ns.image and Path(ns.image).is_dir():
        from pixdesk.cli.batch import run_folder

        return run_folder(ns, "receipt", Path(ns.image))
    if ns.jsonl:
        raise InvalidRequest("--jsonl is for a folder of receipts; for one image the JSON goes to stdout")
    out(_rendered(run_single(ns, "receipt"), FORMATS[ns.format], "receipt"))
    return 0


def _write_atomic(path: Path, text: str) -> None:
    path = path.expanduser()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or Path("."))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _preview_file(doc: str) -> Path:
    """A page that shows the model's document in a sandboxed iframe: no scripts, no network (row 31)."""
    folder = cache_dir() / "previews"
    folder.mkdir(parents=True, exist_ok=True)
    page = PREVIEW.format(doc=html_lib.escape(doc, quote=True))
    path = folder / f"html-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.html"
    _write_atomic(path, page)
    return path
