"""Running the desktop's own tools (xclip, wl-paste, grim, slurp, slop, xprop, ...): find them with an
install hint, and read their output under a deadline and a byte cap (a tool must never hang pixdesk, nor
fill its memory)."""

from __future__ import annotations

import os
import selectors
import shutil
import subprocess
import time
from dataclasses import dataclass

from .errors import CaptureFailed, CaptureUnavailable, FileTooLarge

# tool -> what to install (distribution package names differ; the message names the common ones)
INSTALL_HINTS = {
    "xclip": "xclip (apt/dnf/pacman install xclip)",
    "wl-paste": "wl-clipboard (apt/dnf/pacman install wl-clipboard)",
    "grim": "grim (apt/dnf/pacman install grim)",
    "slurp": "slurp (apt/dnf/pacman install slurp)",
    "slop": "slop (apt/dnf/pacman install slop)",
    "xprop": "xprop (apt install x11-utils; dnf install xprop; pacman -S xorg-xprop)",
    "xwininfo": "xwininfo (apt install x11-utils; dnf install xwininfo; pacman -S xorg-xwininfo)",
    "swaymsg": "sway's swaymsg (it comes with sway)",
    "hyprctl": "Hyprland's hyprctl (it comes with Hyprland)",
    "pngpaste": "pngpaste (brew install pngpaste)",
    "osascript": "osascript (part of macOS)",
    "screencapture": "screencapture (part of macOS)",
}


def find_tool(name: str, purpose: str) -> str:
    """Absolute path of `name` on PATH, or CaptureUnavailable saying what to install."""
    path = shutil.which(name)
    if path is None:
        raise CaptureUnavailable(f"{purpose} needs `{name}`: install {INSTALL_HINTS.get(name, name)}")
    return path


def have_tool(name: str) -> bool:
    return shutil.which(name) is not None


@dataclass(frozen=True)
class Output:
    returncode: int
    stdout: bytes
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run_tool(argv: list[str], *, timeout: float, max_bytes: int, what: str) -> Output:
    """Run argv with no stdin; stdout up to max_bytes (over it: FileTooLarge), stderr up to 64 KiB.

    The deadline covers the whole run; past it the tool is killed and CaptureFailed raised. A tool that forks
    and leaves a child holding the pipes (xclip -i does) is never waited for: only -o style readers run here.
    """
    if os.name != "posix":
        return _run_simple(argv, timeout=timeout, max_bytes=max_bytes, what=what)
    deadline = time.monotonic() + timeout
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = bytearray(), bytearray()
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, out)
            sel.register(proc.stderr, selectors.EVENT_READ, err)
            while sel.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CaptureFailed(f"{what}: `{argv[0]}` did not finish within {timeout:g} s")
                for key, _ in sel.select(left):
                    chunk = os.read(key.fd, 1 << 20)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    key.data.extend(chunk)
                    if len(out) > max_bytes:
                        raise FileTooLarge(f"{what} is over the {max_bytes}-byte image cap")
                    if len(err) > 65536:
                        del err[65536:]
        returncode = proc.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise CaptureFailed(f"{what}: `{argv[0]}` did not exit within {timeout:g} s") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    return Output(returncode, bytes(out), err.decode("utf-8", "replace").strip())


def _run_simple(argv: list[str], *, timeout: float, max_bytes: int, what: str) -> Output:
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CaptureFailed(f"{what}: `{argv[0]}` did not finish within {timeout:g} s") from None
    if len(done.stdout) > max_bytes:
        raise FileTooLarge(f"{what} is over the {max_bytes}-byte image cap")
    return Output(done.returncode, done.stdout, done.stderr.decode("utf-8", "replace").strip()[:65536])


def text_of(argv: list[str], *, what: str, timeout: float = 10.0) -> str:
    """stdout of a helper that must succeed (xprop, xwininfo, swaymsg ...), as text."""
    out = run_tool(argv, timeout=timeout, max_bytes=16 << 20, what=what)
    if not out.ok:
        raise CaptureFailed(f"{what}: `{os.path.basename(argv[0])}` failed: {out.stderr or out.returncode}")
    return out.stdout.decode("utf-8", "replace")
