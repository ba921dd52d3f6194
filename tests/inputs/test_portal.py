"""The xdg-desktop-portal backend against a stand-in portal on a private session bus (dbus-daemon)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pixdesk.inputs import CaptureCancelled, CaptureFailed, CaptureUnavailable, capture, detect_backend
from pixdesk.inputs.portal import portal_screenshot, request_path

from .desktop import stop, unavailable


@pytest.fixture(scope="module", autouse=True)
def _jeepney():
    try:
        import jeepney  # noqa: F401
    except ImportError:
        unavailable("jeepney is not installed (pip install jeepney)")


@pytest.fixture
def bus(session_bus, monkeypatch):
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", session_bus)
    return session_bus


@pytest.fixture
def portal(bus, tmp_path):
    """Start the stand-in in a mode; returns (png bytes, read_log)."""
    procs: list[subprocess.Popen] = []
    png = tmp_path / "shot.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(png, format="PNG")
    Image.new("RGB", (40, 30), (0, 0, 0)).save(tmp_path / "decoy.png", format="PNG")
    log = tmp_path / "calls.jsonl"
    script = Path(__file__).with_name("portal_standin.py")

    def start(mode: str):
        proc = subprocess.Popen([sys.executable, str(script), mode, str(png), str(log), bus],
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        procs.append(proc)
        if proc.stdout.readline().strip() != "ready":
            pytest.fail("the portal stand-in did not start")
        return png.read_bytes(), lambda: [json.loads(line) for line in log.read_text().splitlines()]

    yield start
    for proc in procs:
        stop(proc)


def test_request_path_from_sender_and_token():
    assert request_path(":1.42", "pixdesk_ab") == "/org/freedesktop/portal/desktop/request/1_42/pixdesk_ab"


def test_success_returns_the_png_and_the_request_is_well_formed(portal):
    png, calls = portal("ok")
    got = portal_screenshot()
    assert got.mime == "image/png" and got.data == png
    (call,) = calls()
    token = call["options"]["handle_token"]
    assert token.startswith("pixdesk_") and len(token) > len("pixdesk_") + 8
    assert call["options"]["interactive"] is False and call["parent_window"] == ""
    assert call["path"] == request_path(call["sender"], token)


def test_interactive_select_through_capture(portal, monkeypatch):
    png, calls = portal("ok")
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    monkeypatch.setenv("XDG_CURRENT_DESKTOP", "ubuntu:GNOME")
    monkeypatch.delenv("SWAYSOCK", raising=False)
    monkeypatch.delenv("HYPRLAND_INSTANCE_SIGNATURE", raising=False)
    assert detect_backend() == "portal"
    result = capture("select")
    assert result.backend == "portal" and (result.width, result.height) == (40, 30)
    assert result.images[0].data == png
    assert calls()[0]["options"]["interactive"] is True
    with pytest.raises(CaptureUnavailable, match="use select"):
        capture("window")


def test_answers_from_other_requests_and_other_senders_are_ignored(portal):
    png, calls = portal("decoys")
    assert portal_screenshot().data == png  # not decoy.png, which both earlier signals pointed at


def test_legacy_portal_path_is_followed(portal):
    png, calls = portal("legacy")
    assert portal_screenshot().data == png
    assert calls()[0]["path"].endswith("/request/legacy/42")


def test_response_1_is_a_cancel(portal):
    portal("cancel")
    with pytest.raises(CaptureCancelled) as info:
        portal_screenshot()
    assert info.value.code == "cancelled"


def test_response_2_is_a_failure(portal):
    portal("fail")
    with pytest.raises(CaptureFailed, match="response 2"):
        portal_screenshot()


def test_no_answer_times_out_and_closes_the_request(portal):
    _, calls = portal("silent")
    with pytest.raises(CaptureFailed, match="did not answer in time"):
        portal_screenshot(timeout=0.5)
    screenshot, close = calls()
    assert close == {"call": "Close", "path": screenshot["path"]}


def test_no_portal_on_the_bus_says_what_to_install(bus):
    with pytest.raises(CaptureUnavailable, match="xdg-desktop-portal-gnome"):
        portal_screenshot()


def test_no_session_bus(monkeypatch, tmp_path):
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    with pytest.raises(CaptureUnavailable, match="session bus"):
        portal_screenshot()


def test_png_header_gives_size_without_decoding(portal):
    png, _ = portal("ok")
    img = Image.open(io.BytesIO(portal_screenshot().data))
    assert img.size == (40, 30)
