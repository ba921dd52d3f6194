"""The clipboard: an image put there with xclip (under Xvfb) comes back identical; text goes out and back."""

from __future__ import annotations

import io
import os
import subprocess
import time

import pytest
from PIL import Image

from pixdesk.errors import UnsupportedImageFormat
from pixdesk.inputs import CaptureFailed, ClipboardEmpty, FileTooLarge, copy_text, read_clipboard_image
from pixdesk.inputs.clipboard import choose_image_type, describe_contents

from .desktop import require_tools, stop


@pytest.fixture
def clip(x11, tmp_path):
    require_tools("xclip")
    owners: list[subprocess.Popen] = []

    def offer(path, mime: str) -> subprocess.Popen:
        """Own the clipboard with `path` offered as `mime` (TOOLCHAIN §3: Popen, -quiet keeps it in front)."""
        for attempt in range(3):  # an owner that could not start (display busy) is started again
            errors = tmp_path / f"xclip-{len(owners)}-{attempt}.err"
            with open(errors, "wb") as err:
                proc = subprocess.Popen(
                    ["xclip", "-quiet", "-selection", "clipboard", "-t", mime, "-i", str(path)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                )  # fmt: skip
            owners.append(proc)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and proc.poll() is None:
                targets = subprocess.run(["xclip", "-selection", "clipboard", "-t", "TARGETS", "-o"],
                                         capture_output=True, timeout=5)  # fmt: skip
                if mime.encode() in targets.stdout:
                    return proc
                time.sleep(0.02)
            stop(proc)
            reason = errors.read_text(errors="replace").strip() or f"exit {proc.returncode}"
        pytest.fail(f"xclip did not take the clipboard with {mime}: {reason}")

    yield offer
    for proc in owners:
        stop(proc)


def _pattern_png(tmp_path, fmt="PNG", size=(64, 32)):
    im = Image.new("RGB", size)
    im.putdata([(x * 4 % 256, y * 8 % 256, (x * y) % 256) for y in range(size[1]) for x in range(size[0])])
    path = tmp_path / f"clip.{fmt.lower()}"
    im.save(path, format=fmt)
    return path, im


def test_png_on_the_clipboard_comes_back_identical(clip, tmp_path):
    path, im = _pattern_png(tmp_path)
    clip(path, "image/png")
    got = read_clipboard_image()
    assert got.mime == "image/png"
    assert got.data == path.read_bytes()
    back = Image.open(io.BytesIO(got.data)).convert("RGB")
    assert back.size == im.size and back.tobytes() == im.tobytes()


def test_mime_comes_from_the_bytes_not_the_target(clip, tmp_path):
    path, _ = _pattern_png(tmp_path, fmt="GIF")
    clip(path, "image/png")  # a liar: GIF bytes offered as image/png
    assert read_clipboard_image().mime == "image/gif"


def test_other_image_types_are_refused_by_name(clip, tmp_path):
    path, _ = _pattern_png(tmp_path, fmt="BMP")
    clip(path, "image/bmp")
    with pytest.raises(UnsupportedImageFormat, match="image/bmp"):
        read_clipboard_image()


def test_text_on_the_clipboard_is_not_an_image(clip, tmp_path):
    note = tmp_path / "note.txt"
    note.write_text("hello")
    clip(note, "UTF8_STRING")
    with pytest.raises(ClipboardEmpty, match=r"holds no image \(it holds text\)") as info:
        read_clipboard_image()
    assert info.value.code in ("clipboard_empty", "invalid_request")


def test_image_over_the_cap_is_413(clip, tmp_path):
    path, _ = _pattern_png(tmp_path, size=(256, 256))
    clip(path, "image/png")
    with pytest.raises(FileTooLarge) as info:
        read_clipboard_image(max_bytes=1000)
    assert info.value.http_status == 413 and info.value.code == "image_too_large"


def test_copy_text_is_read_back_by_xclip(clip):
    text = "pixdesk ✓ answer\nline two"
    copy_text(text)
    out = subprocess.run(["xclip", "-selection", "clipboard", "-o"], capture_output=True, timeout=5)
    assert out.stdout.decode() == text
    with pytest.raises(ClipboardEmpty, match="it holds text"):
        read_clipboard_image()  # what pyperclip put there is text, not an image


def test_clipboard_whose_owner_left_is_empty(clip, tmp_path):
    path, _ = _pattern_png(tmp_path)
    owner = clip(path, "image/png")
    stop(owner)  # X11 selections live in their owner: once it exits, nothing is on the clipboard
    with pytest.raises(ClipboardEmpty, match="^the clipboard is empty$"):
        read_clipboard_image()


def test_unreachable_display_is_not_an_empty_clipboard(x11, monkeypatch):
    require_tools("xclip")
    monkeypatch.setenv("DISPLAY", ":9999")
    with pytest.raises(CaptureFailed, match="Can't open display"):
        read_clipboard_image()


def test_target_choice_and_descriptions():
    assert choose_image_type(["TARGETS", "image/jpeg", "image/png", "text/html"]) == "image/png"
    assert choose_image_type(["image/webp", "image/gif"]) == "image/webp"
    assert choose_image_type(["image/x-bmp", "UTF8_STRING"]) == "image/x-bmp"
    assert choose_image_type(["UTF8_STRING", "TEXT"]) is None
    assert describe_contents([]) == "the clipboard is empty"
    assert describe_contents(["TARGETS", "TIMESTAMP"]) == "the clipboard is empty"
    assert "file link" in describe_contents(["text/uri-list", "UTF8_STRING"])
    assert "it holds text" in describe_contents(["UTF8_STRING", "STRING"])
    assert "application/x-foo" in describe_contents(["application/x-foo"])


FAKE_WL_PASTE = """#!/bin/sh
# wl-paste stand-in: --list-types prints $FAKE_TYPES (none: "Nothing is copied"); --type T prints $FAKE_FILE
if [ "$1" = "--list-types" ]; then
    [ -n "$FAKE_TYPES" ] || { echo "Nothing is copied" >&2; exit 1; }
    printf '%s\\n' $FAKE_TYPES
    exit 0
fi
[ "$1 $2" = "--no-newline --type" ] && [ "$3" = "$FAKE_WANT" ] || exit 2
cat "$FAKE_FILE"
"""


def test_wayland_goes_through_wl_paste(tmp_path, monkeypatch):
    """wl-clipboard cannot run without a compositor here: a stand-in with wl-paste's interface."""
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "wl-paste"
    fake.write_text(FAKE_WL_PASTE)
    fake.chmod(0o755)
    path, _ = _pattern_png(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    monkeypatch.setenv("FAKE_FILE", str(path))
    monkeypatch.setenv("FAKE_WANT", "image/png")
    monkeypatch.setenv("FAKE_TYPES", "text/html image/jpeg image/png")
    got = read_clipboard_image()
    assert got.data == path.read_bytes() and got.mime == "image/png"
    monkeypatch.setenv("FAKE_TYPES", "text/plain;charset=utf-8 UTF8_STRING")
    with pytest.raises(ClipboardEmpty, match="it holds text"):
        read_clipboard_image()
    monkeypatch.setenv("FAKE_TYPES", "")
    with pytest.raises(ClipboardEmpty, match="^the clipboard is empty$"):
        read_clipboard_image()
