"""`pixdesk ask`: a question about images (files, the screen, the clipboard), streamed to stdout."""

from __future__ import annotations

import argparse
import sys

from pixdesk.cli.common import engine_flags, err, out, sampling_flags, settings_from
from pixdesk.cli.runner import Done, open_runner
from pixdesk.cli.sources import capture_flags, chosen_mode, gather, read_files
from pixdesk.errors import InvalidRequest


def add_parsers(sub) -> None:
    p = sub.add_parser("ask", help="ask a question about images (streams the answer to stdout)")
    engine_flags(p)
    sampling_flags(p, max_tokens=512)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--system", help="system prompt")
    p.add_argument("--image", action="append", default=[], metavar="FILE", help="an image (repeatable)")
    p.add_argument(
        "--screenshot",
        action="store_true",
        help="capture the screen (all monitors unless a mode flag below says otherwise)",
    )
    capture_flags(p)
    p.add_argument("--clipboard", action="store_true", help="the image on the clipboard")
    p.add_argument(
        "args",
        nargs="+",
        metavar="[FILE]... QUESTION",
        help="image files, then the question ('-' reads it from stdin)",
    )
    p.set_defaults(run=cmd_ask)


def cmd_ask(ns: argparse.Namespace) -> int:
    *files, question = ns.args
    question = sys.stdin.read() if question == "-" else question
    if not question.strip():
        raise InvalidRequest("the question is empty; give it as the last argument")
    settings = settings_from(ns)
    mode = chosen_mode(ns, "full" if ns.screenshot else None)
    read = read_files([*ns.image, *files], settings)
    runner = open_runner(ns, settings)
    try:
        images = gather(ns, settings, read, runner.max_image_size, screen_mode=mode)
        sampling = {
            "max_tokens": ns.max_tokens,
            "temperature": ns.temperature,
            "top_p": ns.top_p,
            "seed": ns.seed,
        }
        for piece in runner.chat(images, question, system=ns.system, sampling=sampling):
            if isinstance(piece, Done):
                out("\n")
                err(
                    f"[{piece.finish_reason}: {piece.prompt_tokens} prompt + {piece.completion_tokens} "
                    "generated tokens]"
                )
            else:
                out(piece)
    finally:
        runner.close()
    return 0
