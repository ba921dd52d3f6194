"""wlroots Wayland (sway): grim, slurp and swaymsg are driven with the right arguments and grim's PPM becomes
PNG. The tools need a running compositor, so stand-ins with their command-line interfaces play them."""

from __future__ import annotations

import io
import json
import os
import sys

import pytest
from PIL import Image

from pixdesk.errors import InvalidRequest
from pixdesk.inputs import CaptureCancelled, capture, detect_backend

GRIM = """
import json, os, sys
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
w, h = 200, 100
pixels = bytes((x % 256, y % 256, 7)[c] for y in range(h) for x in range(w) for c in range(3))
sys.stdout.buffer.write(b"P6\\n%d %d\\n255\\n" % (w, h) + pixels)
"""
SWAYMSG = """
import json, sys
if sys.argv[-1] == "get_outputs":
    rects = [{"x": 0, "y": 0, "width": 1920, "height": 1080},
             {"x": 1920, "y": 0, "width": 2560, "height": 1440}]
    names = ["eDP-1", "HDMI-A-1"]
    print(json.dumps([{"name": n, "active": True, "rect": r} for n, r in zip(names, rects)]))
else:
    print(json.dumps({"type": "root", "nodes": [{"type": "workspace", "nodes": [
        {"type": "con", "focused": True, "rect": {"x": 960, "y": 30, "width": 960, "height": 1050}}]}]}))
"""
SLURP = """
import os, sys
sys.exit(1) if os.environ.get("FAKE_CANCEL") else print("10,20 30x40")
"""


@pytest.fixture
def sway(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("grim", GRIM), ("swaymsg", SWAYMSG), ("slurp", SLURP)):
        (bin_dir / name).write_text(f"#!{sys.executable}\n{body}")
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "grim.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-1")
    monkeypatch.setenv("XDG_CURRENT_DESKTOP", "sway")
    monkeypatch.setenv("DISPLAY", ":0")  # XWayland: must be ignored
    return lambda: [json.loads(line) for line in log.read_text().splitlines()][-1]


@pytest.mark.parametrize(
    ("kwargs", "grim_args"),
    [
        ({"mode": "full"}, ["-t", "ppm", "-"]),
        ({"mode": "monitor", "monitor": 2}, ["-t", "ppm", "-o", "HDMI-A-1", "-"]),
        ({"mode": "monitor"}, ["-t", "ppm", "-o", "eDP-1", "-"]),
        ({"mode": "region", "region": (5, 6, 7, 8)}, ["-t", "ppm", "-g", "5,6 7x8", "-"]),
        ({"mode": "window"}, ["-t", "ppm", "-g", "960,30 960x1050", "-"]),
        ({"mode": "select"}, ["-t", "ppm", "-g", "10,20 30x40", "-"]),
    ],
)
def test_grim_arguments_and_pixels(sway, kwargs, grim_args):
    assert detect_backend() == "grim"
    result = capture(**kwargs)
    assert sway() == grim_args
    assert result.backend == "grim" and (result.width, result.height) == (200, 100)
    im = Image.open(io.BytesIO(result.images[0].data)).convert("RGB")
    assert im.size == (200, 100) and im.getpixel((13, 57)) == (13, 57, 7)


def test_select_cancel_and_bad_monitor(sway, monkeypatch):
    with pytest.raises(InvalidRequest, match="monitor must be 1..2"):
        capture("monitor", monitor=3)
    monkeypatch.setenv("FAKE_CANCEL", "1")
    with pytest.raises(CaptureCancelled):
        capture("select")


def test_missing_grim_names_the_package(sway, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(Exception, match=r"needs `grim`: install grim"):
        capture("full")
