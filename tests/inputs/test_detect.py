"""Backend detection from the environment, the geometry parsers, and the package's import hygiene."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pixdesk.errors import KINDS, InvalidRequest
from pixdesk.inputs import CaptureUnavailable, capture, detect_backend
from pixdesk.inputs import errors as input_errors
from pixdesk.inputs.geometry import focused_sway_rect, parse_region, parse_xprop_active, parse_xwininfo
from pixdesk.inputs.pixels import Rect


@pytest.mark.parametrize(
    ("env", "platform", "backend"),
    [
        ({"DISPLAY": ":0"}, "linux", "x11"),
        (
            {"WAYLAND_DISPLAY": "wayland-0", "DISPLAY": ":0", "XDG_CURRENT_DESKTOP": "GNOME"},
            "linux",
            "portal",
        ),
        ({"WAYLAND_DISPLAY": "wayland-0", "XDG_CURRENT_DESKTOP": "KDE"}, "linux", "portal"),
        ({"WAYLAND_DISPLAY": "wayland-0", "XDG_CURRENT_DESKTOP": "ubuntu:GNOME"}, "linux", "portal"),
        ({"WAYLAND_DISPLAY": "wayland-1", "XDG_CURRENT_DESKTOP": "sway", "DISPLAY": ":0"}, "linux", "grim"),
        ({"WAYLAND_DISPLAY": "wayland-1", "HYPRLAND_INSTANCE_SIGNATURE": "abc"}, "linux", "grim"),
        ({"WAYLAND_DISPLAY": "wayland-1", "XDG_CURRENT_DESKTOP": "river"}, "linux", "grim"),
        ({"XDG_SESSION_TYPE": "wayland", "XDG_CURRENT_DESKTOP": "GNOME", "DISPLAY": ":0"}, "linux", "portal"),
        ({}, "win32", "windows"),
        ({"DISPLAY": ":0"}, "darwin", "macos"),
    ],
)
def test_detect_backend(env, platform, backend):
    assert detect_backend(env, platform) == backend


def test_no_display_is_an_actionable_error():
    with pytest.raises(CaptureUnavailable, match="neither WAYLAND_DISPLAY nor DISPLAY"):
        detect_backend({}, "linux")


def test_bad_arguments_are_invalid_requests():
    with pytest.raises(InvalidRequest, match="mode must be one of"):
        capture("everything")
    with pytest.raises(InvalidRequest, match="needs region"):
        capture("region")
    with pytest.raises(InvalidRequest, match="only used with mode='region'"):
        capture("full", region=(0, 0, 1, 1))


def test_windows_has_no_interactive_select():
    with pytest.raises(CaptureUnavailable, match="Win\\+Shift\\+S"):
        capture("select", backend="windows")


def test_xprop_output_forms():
    assert parse_xprop_active("_NET_ACTIVE_WINDOW(WINDOW): window id # 0x3a00007\n") == 0x3A00007
    assert parse_xprop_active("_NET_ACTIVE_WINDOW(CARDINAL) = 60817415\n") == 60817415
    with pytest.raises(CaptureUnavailable, match="_NET_ACTIVE_WINDOW"):
        parse_xprop_active("_NET_ACTIVE_WINDOW:  not found.\n")
    with pytest.raises(Exception, match="no window is active"):
        parse_xprop_active("_NET_ACTIVE_WINDOW(WINDOW): window id # 0x0\n")


def test_xwininfo_geometry():
    text = """
xwininfo: Window id: 0x3a00007 "term"
  Absolute upper-left X:  -20
  Absolute upper-left Y:  45
  Relative upper-left X:  0
  Width: 800
  Height: 600
"""
    assert parse_xwininfo(text) == Rect(-20, 45, 800, 600)


def test_region_strings():
    assert parse_region("10,20 300x200") == Rect(10, 20, 300, 200)  # slurp
    assert parse_region("10 20 300 200") == Rect(10, 20, 300, 200)  # slop -f
    assert parse_region("10,20,300,200") == Rect(10, 20, 300, 200)  # --region
    with pytest.raises(InvalidRequest):
        parse_region("10,20,300")
    with pytest.raises(InvalidRequest):
        parse_region("10,20,0,5")


def test_sway_focused_window():
    tree = {"type": "root", "nodes": [{"type": "output", "nodes": [{"type": "workspace", "nodes": [
        {"type": "con", "focused": False, "rect": {"x": 0, "y": 0, "width": 5, "height": 5}},
        {"type": "con", "focused": True, "rect": {"x": 960, "y": 30, "width": 960, "height": 1050}},
    ], "floating_nodes": []}]}]}  # fmt: skip
    assert focused_sway_rect(tree) == Rect(960, 30, 960, 1050)


def test_error_codes_use_the_table_or_an_existing_row():
    wanted = {"PathNotAllowed": "path_not_allowed", "NotARegularFile": "not_a_regular_file",
              "CaptureUnavailable": "capture_unavailable", "CaptureFailed": "capture_failed",
              "ClipboardEmpty": "clipboard_empty"}  # fmt: skip
    for name, code in wanted.items():
        cls = getattr(input_errors, name)
        assert cls.code in KINDS
        assert cls.code == code or code not in KINDS
    assert input_errors.FileTooLarge("x").http_status == 413
    assert input_errors.CaptureCancelled("x").code == "cancelled"


def test_inputs_import_neither_torch_nor_pillow():
    code = (
        "import sys, pixdesk.inputs, pixdesk.inputs.portal, pixdesk.inputs.grabbers;"
        "print('torch' in sys.modules, 'PIL.Image' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
