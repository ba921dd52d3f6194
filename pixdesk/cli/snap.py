"""`pixdesk snap`: the hotkey flow. Capture (area selection by default, or the active window, a monitor, a
region, the whole screen, or the clipboard's image), ask a question (--question, the words after the flags,
or a small prompt), stream the answer into a notification, put it on the clipboard, print it to stdout,
and optionally show it in a small window.

The plugins/hotkey bindings call `snap --select|--window|--clipboard --notify --copy`; notifying and copying
are on by default (--no-notify / --no-copy turn them off). When run from a hotkey there is no terminal, so
errors are shown as a notification too.
"""

from __future__ import annotations

import argparse
import threading

from pixdesk.cli.common import copy_to_clipboard, engine_flags, err, out, sampling_flags, settings_from
from pixdesk.cli.runner import Runner, open_runner
from pixdesk.cli.sources import capture_flags, check_count, chosen_mode, grab_screen, read_clipboard
from pixdesk.errors import Cancelled, PixdeskError


def add_parsers(sub) -> None:
    p = sub.add_parser("snap", help="capture, ask, and get the answer as a notification and on the clipboard")
    engine_flags(p)
    sampling_flags(p, max_tokens=512)
    group = capture_flags(p)
    group.add_argument("--clipboard", action="store_true", help="the image on the clipboard, not the screen")
    p.add_argument(
        "-q", "--question", help="the question (otherwise the words after the flags, else a prompt)"
    )
    p.add_argument("words", nargs="*", metavar="QUESTION", help="the question, when --question is not given")
    p.add_argument(
        "--notify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show the answer as a desktop notification, updated as it streams (default on)",
    )
    p.add_argument(
        "--copy",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="put the answer on the clipboard (default on)",
    )
    p.add_argument("--window-answer", action="store_true", help="also stream the answer into a small window")
    p.set_defaults(run=cmd_snap)


def cmd_snap(ns: argparse.Namespace) -> int:
    from pixdesk.cli.desktop import Notifier

    notifier = Notifier(ns.notify)
    try:
        return _snap(ns, notifier)
    except Cancelled as exc:
        err(f"pixdesk: {exc.message}")
        return 1
    except PixdeskError as exc:
        notifier.final(exc.message, title="pixdesk: error")
        raise


def _snap(ns: argparse.Namespace, notifier) -> int:
    from pixdesk.cli.desktop import AnswerWindow, ask_question

    settings = settings_from(ns)
    connecting = _Background(lambda: open_runner(ns, settings))  # the daemon wakes while the user aims
    try:
        if ns.clipboard:
            images = [read_clipboard(settings)]
        else:
            shot = grab_screen(ns, chosen_mode(ns, "select"), settings, _max_size(connecting))
            images = shot.images
        check_count(images, settings)
        question = ns.question or " ".join(ns.words).strip() or ask_question()
        notifier.update(f"Q: {question}")
        runner = connecting.result()
    except BaseException:
        connecting.discard()
        raise
    window = AnswerWindow(question) if ns.window_answer else None
    try:
        answer = _stream(runner, images, question, ns, notifier, window)
    finally:
        runner.close()
    notifier.final(answer or "(empty answer)")
    if ns.copy and answer:
        copy_to_clipboard(answer)
        err("pixdesk: the answer is on the clipboard")
    if window is not None:
        window.wait()
    return 0


def _stream(runner: Runner, images, question: str, ns, notifier, window) -> str:
    options = {
        "question": question,
        "max_tokens": ns.max_tokens,
        "temperature": ns.temperature,
        "seed": ns.seed,
    }
    parts: list[str] = []
    for piece in runner.task("ask", images, options, stream=True):
        if isinstance(piece, dict):  # the task result: the answer as the task renders it
            out("\n")
            return (piece.get("rendered") or {}).get("markdown") or "".join(parts).strip()
        parts.append(piece)
        out(piece)
        notifier.update("".join(parts))
        if window is not None:
            window.pump(piece)
    return "".join(parts).strip()


def _max_size(connecting: _Background) -> int:
    """The model's image size when the runner already knows it (tiling and the downscale note need it)."""
    return 1024 if not connecting.done() else getattr(connecting.result(), "max_image_size", 1024)


class _Background:
    """Run `fn` in a thread; result() joins and re-raises its error."""

    def __init__(self, fn):
        self._value = self._error = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn) -> None:
        try:
            self._value = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in result()
            self._error = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value

    def discard(self) -> None:
        """The command failed before using the runner: close it if it came up."""
        if self.done() and self._value is not None:
            self._value.close()
