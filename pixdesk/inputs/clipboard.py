"""The clipboard: an image in (bytes + mime, size-capped), text out.

Image in, by platform:
- Wayland: `wl-paste --list-types`, then `wl-paste --type BEST` (wl-clipboard).
- X11: `xclip -selection clipboard -t TARGETS -o`, then `xclip -selection clipboard -t BEST -o`. The owner
  converts, so a browser's copied image is offered as image/png even if it holds a JPEG.
- macOS: `pngpaste -` when installed, else AppleScript writes `the clipboard as «class PNGf»` to a file.
- Windows, and the fallback elsewhere: Pillow's ImageGrab.grabclipboard().
The bytes are checked by magic (PNG, JPEG, WebP, GIF) and never decoded here - except on the ImageGrab path,
which hands back a decoded image (Windows keeps bitmaps as DIB): that one is re-encoded to PNG after its
header size is checked against the pixel cap.
Text out goes through pyperclip (xclip/xsel, wl-copy, pbcopy, the Win32 API).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile

from pixdesk.errors import ImageTooLarge

from .errors import CaptureFailed, CaptureUnavailable, ClipboardEmpty
from .pixels import ACCEPTED_MIMES, DEFAULT_MAX_BYTES, ImageBytes, accepted_image
from .proc import find_tool, have_tool, run_tool

TIMEOUT_S = 10.0
TEXT_TYPES = ("UTF8_STRING", "STRING", "TEXT", "COMPOUND_TEXT", "text/plain", "public.utf8-plain-text")
DEFAULT_MAX_PIXELS = 64_000_000  # = ImageSettings.max_pixels


def choose_image_type(types: list[str]) -> str | None:
    """The best image type offered: PNG, JPEG, WebP, GIF in that order, then any other image/*."""
    offered = [t.strip() for t in types if t.strip()]
    for mime in ACCEPTED_MIMES:
        if mime in offered:
            return mime
    return next((t for t in offered if t.startswith("image/")), None)


def describe_contents(types: list[str]) -> str:
    """What a clipboard without an image holds, for the error message."""
    offered = [
        t.strip() for t in types if t.strip() and t.strip() not in ("TARGETS", "MULTIPLE", "TIMESTAMP")
    ]
    if not offered:
        return "the clipboard is empty"
    if "text/uri-list" in offered or "x-special/gnome-copied-files" in offered:
        return "the clipboard holds no image (it holds a file link): pass the file itself instead"
    if any(t in TEXT_TYPES or t.startswith("text/") for t in offered):
        return "the clipboard holds no image (it holds text)"
    return f"the clipboard holds no image (it holds {', '.join(offered[:5])})"


def read_clipboard_image(
    *, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS
) -> ImageBytes:
    """The clipboard's image.

    Raises ClipboardEmpty, CaptureUnavailable, CaptureFailed, FileTooLarge, UnsupportedImageFormat.
    """
    if sys.platform == "win32":
        return _imagegrab(max_bytes, max_pixels)
    if sys.platform == "darwin":
        return _macos(max_bytes, max_pixels)
    if os.environ.get("WAYLAND_DISPLAY") and have_tool("wl-paste"):
        return _wl_paste(max_bytes)
    if os.environ.get("DISPLAY") and have_tool("xclip"):
        return _xclip(max_bytes)
    if os.environ.get("WAYLAND_DISPLAY"):
        find_tool("wl-paste", "reading the clipboard on Wayland")
    if os.environ.get("DISPLAY"):
        find_tool("xclip", "reading the clipboard on X11")
    raise CaptureUnavailable(
        "no display to read a clipboard from (neither WAYLAND_DISPLAY nor DISPLAY is set)"
    )


def _wl_paste(max_bytes: int) -> ImageBytes:
    listing, reading = ["wl-paste", "--list-types"], ["wl-paste", "--no-newline", "--type"]
    return _via_tool(listing, reading, ("Nothing is copied", "No selection"), max_bytes, "Wayland")


def _xclip(max_bytes: int) -> ImageBytes:
    base = ["xclip", "-selection", "clipboard", "-o", "-t"]
    return _via_tool(base + ["TARGETS"], base, ("not available",), max_bytes, "X11")


def _via_tool(listing: list[str], reading: list[str], empty: tuple[str, ...], max_bytes: int, where: str):
    """List the offered types, pick the best image type, read it. `empty`: what the tool says when nobody
    owns the clipboard (any other complaint, such as an unreachable display, is a failure, not "empty")."""
    listed = run_tool(listing, timeout=TIMEOUT_S, max_bytes=1 << 16, what="the clipboard")
    if not listed.ok and listed.stderr and not any(marker in listed.stderr for marker in empty):
        raise CaptureFailed(f"reading the {where} clipboard failed: {listed.stderr}")
    types = listed.stdout.decode("utf-8", "replace").splitlines() if listed.ok else []
    best = choose_image_type(types)
    if best is None:
        raise ClipboardEmpty(describe_contents(types))
    out = run_tool(reading + [best], timeout=TIMEOUT_S, max_bytes=max_bytes, what="the clipboard image")
    return _checked(out, best)


def _checked(out, mime: str) -> ImageBytes:
    if not out.ok or not out.stdout:
        raise CaptureFailed(f"reading the clipboard as {mime} failed: {out.stderr or 'no data'}")
    return accepted_image(out.stdout, f"the clipboard's {mime} data")


_MAC_WRITE_PNG = """
on run argv
    set f to open for access (POSIX file (item 1 of argv)) with write permission
    try
        write (the clipboard as «class PNGf») to f
    end try
    close access f
end run
"""


def _macos(max_bytes: int, max_pixels: int) -> ImageBytes:  # pragma: no cover - needs macOS
    if have_tool("pngpaste"):
        out = run_tool(["pngpaste", "-"], timeout=TIMEOUT_S, max_bytes=max_bytes, what="the clipboard image")
        if out.ok and out.stdout:
            return accepted_image(out.stdout, "the clipboard image")
    with tempfile.TemporaryDirectory(prefix="pixdesk-clip-") as tmp:
        path = os.path.join(tmp, "clip.png")
        out = run_tool(
            ["osascript", "-e", _MAC_WRITE_PNG, path],
            timeout=TIMEOUT_S,
            max_bytes=1 << 16,
            what="the clipboard",
        )
        size = os.path.getsize(path) if out.ok and os.path.exists(path) else 0
        if size > max_bytes:
            raise ImageTooLarge(f"the clipboard image is {size} bytes, over the {max_bytes}-byte image cap")
        if size:
            with open(path, "rb") as f:
                return accepted_image(f.read(), "the clipboard image")
    info = run_tool(
        ["osascript", "-e", "clipboard info"], timeout=TIMEOUT_S, max_bytes=1 << 16, what="clipboard"
    )
    text = info.stdout.decode("utf-8", "replace")
    if "TIFF" in text or "PNGf" in text:
        return _imagegrab(max_bytes, max_pixels)
    return _raise_empty(["text/plain"] if ("string" in text or "utf8" in text) else [])


def _raise_empty(types: list[str]) -> ImageBytes:
    raise ClipboardEmpty(describe_contents(types))


def _imagegrab(max_bytes: int, max_pixels: int) -> ImageBytes:
    """Pillow's ImageGrab: returns an Image, a list of file names, or None; raises on text (Linux)."""
    try:
        from PIL import ImageGrab, UnidentifiedImageError
    except ImportError:  # pragma: no cover - Pillow is a core dependency
        raise CaptureUnavailable("reading the clipboard needs Pillow") from None
    try:
        im = ImageGrab.grabclipboard()
    except UnidentifiedImageError:
        raise ClipboardEmpty(describe_contents(["text/plain"])) from None
    except (OSError, NotImplementedError) as e:
        raise CaptureUnavailable(f"reading the clipboard failed: {e}") from None
    if im is None:
        raise ClipboardEmpty(describe_contents([]))
    if isinstance(im, list):
        raise ClipboardEmpty(describe_contents(["text/uri-list"]))
    w, h = im.size
    if w * h > max_pixels:
        raise ImageTooLarge(f"the clipboard image is {w}x{h} px, over the {max_pixels}-pixel cap")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    if buf.tell() > max_bytes:
        raise ImageTooLarge(
            f"the clipboard image is {buf.tell()} bytes as PNG, over the {max_bytes}-byte cap"
        )
    return ImageBytes(buf.getvalue(), "image/png")


def copy_text(text: str) -> None:
    """Put `text` on the clipboard (an answer, a table, the HTML of a screenshot)."""
    if _copy_with_tool(text):
        return
    try:
        import pyperclip
    except ImportError:  # pragma: no cover - a core dependency
        raise CaptureUnavailable("copying text needs the Python package pyperclip") from None
    try:
        pyperclip.copy(text)
    except pyperclip.PyperclipException:
        raise CaptureUnavailable(
            "copying text needs a clipboard tool: install xclip or xsel (X11) or wl-clipboard (Wayland)"
        ) from None


def _copy_with_tool(text: str) -> bool:
    """xclip / wl-copy with their output detached: the forked clipboard owner must not keep the caller's
    stdout open (pyperclip lets it inherit it, so `pixdesk snap | cat` would never see EOF)."""
    if os.environ.get("WAYLAND_DISPLAY") and shutil.which("wl-copy"):
        cmd = ["wl-copy"]
    elif os.environ.get("DISPLAY") and shutil.which("xclip"):
        cmd = ["xclip", "-selection", "clipboard"]
    else:
        return False
    try:
        done = subprocess.run(
            cmd, input=text.encode(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0
