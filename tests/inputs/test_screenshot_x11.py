"""Screen capture under a real X server (Xvfb) with a Tk window showing a known pattern: every X11 mode."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from pixdesk.errors import InvalidRequest
from pixdesk.inputs import CaptureCancelled, capture, detect_backend
from pixdesk.inputs.geometry import x11_active_window

from .desktop import require_tools, stop
from .pattern_window import cell_colour

WIN = (100, 80, 320, 200)  # x, y, w, h of the pattern window
SCREEN = (1280, 800)


def expected_pattern(w: int, h: int) -> Image.Image:
    im = Image.new("RGB", (w, h))
    for row in range(4):
        for col in range(4):
            box = (col * w // 4, row * h // 4, (col + 1) * w // 4, (row + 1) * h // 4)
            im.paste(cell_colour(col, row), box)
    return im


def decode(capture_result) -> Image.Image:
    (image,) = capture_result.images
    assert image.mime == "image/png"
    im = Image.open(io.BytesIO(image.data))
    assert im.format == "PNG"
    return im.convert("RGB")


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and a.tobytes() == b.tobytes()


@pytest.fixture(scope="module")
def pattern_window(xvfb_display, tk_available):
    """The Tk pattern window, drawn and visible; yields its toplevel window id."""
    env = dict(os.environ, DISPLAY=xvfb_display)
    script = Path(__file__).with_name("pattern_window.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), *map(str, WIN)], env=env, stdout=subprocess.PIPE, text=True
    )
    win_id = proc.stdout.readline().strip()
    if not win_id:
        stop(proc)
        pytest.fail("the Tk pattern window did not start")
    yield int(win_id, 16)
    stop(proc)


@pytest.fixture
def shown(x11, pattern_window):
    """Wait until the window's pixels are on the screen (Tk maps asynchronously)."""
    want = expected_pattern(WIN[2], WIN[3])
    deadline = time.monotonic() + 10
    while True:
        got = decode(capture("region", region=WIN, backend="x11"))
        if same_pixels(got, want) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return pattern_window


def test_backend_detected_as_x11(x11):
    assert detect_backend() == "x11"


def test_full_screen_holds_the_window_at_its_place(shown):
    result = capture("full")  # backend detected from DISPLAY
    assert result.backend == "x11"
    assert (result.width, result.height) == SCREEN
    im = decode(result)
    assert im.size == SCREEN
    x, y, w, h = WIN
    assert same_pixels(im.crop((x, y, x + w, y + h)), expected_pattern(w, h))
    assert im.getpixel((x - 1, y - 1)) == (0, 0, 0)  # black root (-br) right outside the window
    assert result.downscale is None and result.notes == []  # 1280 px: shrunk 1.25x, no warning


def test_monitor_one_is_the_whole_screen_and_bad_monitor_is_named(shown):
    im = decode(capture("monitor", monitor=1))
    x, y, w, h = WIN
    assert im.size == SCREEN
    assert same_pixels(im.crop((x, y, x + w, y + h)), expected_pattern(w, h))
    assert same_pixels(decode(capture("monitor")), im)  # default: the primary monitor
    with pytest.raises(InvalidRequest, match=r"monitor must be 1\.\.1 \(1: 1280x800 at 0,0\), got 2"):
        capture("monitor", monitor=2)


def test_region_is_exactly_the_requested_pixels(shown):
    x, y, w, h = WIN
    im = decode(capture("region", region=(x + w // 4, y + h // 4, w // 2, h // 2)))
    assert same_pixels(im, expected_pattern(w, h).crop((w // 4, h // 4, 3 * w // 4, 3 * h // 4)))
    edge = decode(capture("region", region=(1200, 700, 500, 500)))  # clipped to the screen
    assert edge.size == (80, 100)
    with pytest.raises(InvalidRequest, match="outside the screen"):
        capture("region", region=(5000, 5000, 10, 10))
    with pytest.raises(InvalidRequest, match="positive"):
        capture("region", region=(0, 0, 0, 10))


def test_active_window_from_net_active_window(shown, x11):
    require_tools("xprop", "xwininfo")
    subprocess.run(["xprop", "-root", "-remove", "_NET_ACTIVE_WINDOW"], check=True)
    with pytest.raises(Exception, match="_NET_ACTIVE_WINDOW"):  # no window manager: said plainly
        capture("window")
    subprocess.run(
        ["xprop", "-root", "-f", "_NET_ACTIVE_WINDOW", "32x", "-set", "_NET_ACTIVE_WINDOW", hex(shown)],
        check=True,
    )
    x, y, w, h = WIN
    rect = x11_active_window()
    assert (rect.x, rect.y, rect.w, rect.h) == WIN
    result = capture("window")
    assert (result.width, result.height) == (w, h)
    assert same_pixels(decode(result), expected_pattern(w, h))


def _fake_tool(tmp_path: Path, name: str, script: str) -> None:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_select_uses_slop_geometry_and_reports_cancel(shown, tmp_path, monkeypatch):
    """slop stand-in: prints what slop -f '%x %y %w %h' prints after a drag (or exits 1 on Esc)."""
    require_tools("xprop")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    x, y, w, h = WIN
    _fake_tool(tmp_path, "slop", f'[ "$2" = "%x %y %w %h" ] || exit 3\necho "{x} {y} {w} {h}"')
    assert same_pixels(decode(capture("select")), expected_pattern(w, h))
    _fake_tool(tmp_path, "slop", "exit 1")
    with pytest.raises(CaptureCancelled):
        capture("select")


def test_missing_slop_names_the_package(x11, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    with pytest.raises(Exception, match=r"needs `slop`: install slop") as info:
        capture("select", backend="x11")
    assert info.value.code in ("capture_unavailable", "invalid_request")


def test_large_capture_can_be_tiled_and_tiles_rebuild_the_screen(shown):
    """max_image_size 400 against a 1280x800 screen: 3.2x shrink -> a warning; tile=True -> tiles that
    together hold every pixel of the untiled capture."""
    untiled = capture("full", max_image_size=400)
    assert untiled.downscale is not None and untiled.downscale.factor == pytest.approx(3.2)
    assert "shrunk 3.2x" in untiled.notes[0] and "tiles (--tile)" in untiled.notes[0]
    whole = decode(untiled)
    tiled = capture("full", max_image_size=400, tile=True)
    assert len(tiled.images) == len(tiled.tiles) == untiled.downscale.tiles > 1
    canvas = Image.new("RGB", whole.size, (1, 2, 3))
    for image, rect in zip(tiled.images, tiled.tiles):
        tile = Image.open(io.BytesIO(image.data)).convert("RGB")
        assert tile.size == (rect.w, rect.h) and max(tile.size) <= 400
        assert same_pixels(tile, whole.crop((rect.x, rect.y, rect.x + rect.w, rect.y + rect.h)))
        canvas.paste(tile, (rect.x, rect.y))
    assert same_pixels(canvas, whole)
    assert tiled.downscale is None and "tiles" in tiled.notes[0]
