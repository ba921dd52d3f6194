"""The hotkey flow's bits of desktop UI: a one-line question prompt, a notification that follows the
streaming answer, and an optional small answer window.

Prompt: zenity, kdialog (Linux), osascript (macOS), PowerShell's InputBox (Windows), else a Tk dialog.
Notifications: PIXDESK_NOTIFY_CMD when set (a stand-in: called as CMD TITLE BODY for every update), else
notify-send (updated in place through its id), osascript, or a PowerShell balloon; nothing when none works.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time

from pixdesk.inputs import CaptureCancelled, CaptureUnavailable

TITLE = "pixdesk"
BODY_LIMIT = 1500  # notification servers cut long bodies anyway
UPDATE_EVERY_S = 0.4


def ask_question(prompt: str = "Ask about the capture:") -> str:
    """The user's question from a small dialog; CaptureCancelled when dismissed or left empty."""
    for argv in _prompt_commands(prompt):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode != 0:
            raise CaptureCancelled("no question asked")
        return _nonempty(done.stdout)
    return _nonempty(_tk_prompt(prompt))


def _prompt_commands(prompt: str) -> list[list[str]]:
    if sys.platform == "darwin":
        script = (
            f'text returned of (display dialog {_applescript(prompt)} default answer "" with title "pixdesk")'
        )
        return [["osascript", "-e", script]]
    if sys.platform == "win32":
        ps = (
            "Add-Type -AssemblyName Microsoft.VisualBasic; "
            f"[Microsoft.VisualBasic.Interaction]::InputBox('{prompt}', 'pixdesk')"
        )
        return [["powershell", "-NoProfile", "-Command", ps]]
    tools = [
        ["zenity", "--entry", "--title", TITLE, "--text", prompt, "--width", "480"],
        ["kdialog", "--title", TITLE, "--inputbox", prompt],
    ]
    return [argv for argv in tools if shutil.which(argv[0])]


def _tk_prompt(prompt: str) -> str | None:
    try:
        import tkinter
        from tkinter import simpledialog
    except ImportError:
        raise CaptureUnavailable(_NO_PROMPT) from None
    try:
        root = tkinter.Tk()
    except tkinter.TclError:
        raise CaptureUnavailable(_NO_PROMPT) from None
    root.withdraw()
    try:
        return simpledialog.askstring(TITLE, prompt, parent=root)
    finally:
        root.destroy()


_NO_PROMPT = (
    "no way to ask for the question here: install zenity (GNOME) or kdialog (KDE), or give it with --question"
)


def _nonempty(text: str | None) -> str:
    if not text or not text.strip():
        raise CaptureCancelled("no question asked")
    return text.strip()


def _applescript(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Notifier:
    """One notification following an answer: update() as text streams (rate-limited), final() at the end."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.custom = shlex.split(os.environ.get("PIXDESK_NOTIFY_CMD", ""))
        self.notify_send = shutil.which("notify-send") if sys.platform.startswith("linux") else None
        self.id: str | None = None
        self.last = 0.0

    def update(self, body: str) -> None:
        if self.enabled and time.monotonic() - self.last >= UPDATE_EVERY_S:
            self._show(body + " …", final=False)

    def final(self, body: str, title: str = TITLE) -> None:
        if self.enabled:
            self._show(body, final=True, title=title)

    def _show(self, body: str, *, final: bool, title: str = TITLE) -> None:
        self.last = time.monotonic()
        body = body if len(body) <= BODY_LIMIT else body[: BODY_LIMIT - 1] + "…"
        if self.custom:
            _quiet([*self.custom, title, body])
        elif self.notify_send:
            argv = [self.notify_send, "--app-name", TITLE, "--print-id"]
            if self.id:
                argv += ["--replace-id", self.id]
            out = _quiet([*argv, title, body])
            if out and out.strip().isdigit():
                self.id = out.strip()
        elif final and sys.platform == "darwin":
            _quiet(
                [
                    "osascript",
                    "-e",
                    f"display notification {_applescript(body)} with title {_applescript(title)}",
                ]
            )
        elif final and sys.platform == "win32":
            _quiet(["powershell", "-NoProfile", "-Command", _balloon(title, body)])


def _quiet(argv: list[str]) -> str | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None


def _balloon(title: str, body: str) -> str:
    q = lambda s: "'" + s.replace("'", "''") + "'"
    return (
        "Add-Type -AssemblyName System.Windows.Forms; $n = New-Object System.Windows.Forms.NotifyIcon; "
        "$n.Icon = [System.Drawing.SystemIcons]::Information; $n.Visible = $true; "
        f"$n.ShowBalloonTip(10000, {q(title)}, {q(body)}, 'Info'); Start-Sleep -Seconds 10; $n.Dispose()"
    )


class AnswerWindow:
    """A small Tk window the answer streams into; stays until closed. Single-threaded: pump() runs Tk's
    pending events between chunks, wait() hands control to Tk until the user closes it."""

    def __init__(self, title: str):
        import tkinter
        from tkinter import scrolledtext

        self.root = tkinter.Tk()
        self.root.title(f"pixdesk: {title[:60]}")
        self.text = scrolledtext.ScrolledText(self.root, wrap="word", width=72, height=18)
        self.text.pack(fill="both", expand=True)
        self.closed = False
        self.root.protocol("WM_DELETE_WINDOW", self._close)
        self.root.update()

    def pump(self, piece: str) -> None:
        if not self.closed:
            self.text.insert("end", piece)
            self.text.see("end")
            self.root.update()

    def wait(self) -> None:
        if not self.closed:
            self.root.mainloop()

    def _close(self) -> None:
        self.closed = True
        self.root.destroy()
