"""Real desktop parts for the inputs tests: Xvfb, a D-Bus session bus, Tk for a pattern window."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from .desktop import require_tools, stop, unavailable


@pytest.fixture(scope="session")
def xvfb_display():
    """A private Xvfb (1280x800, 24-bit, black root); -displayfd picks a free display number."""
    require_tools("Xvfb", "xauth")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1280x800x24", "-nolisten", "tcp", "-br"],
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(write_fd)
    number = b""
    deadline = time.monotonic() + 15
    while not number.endswith(b"\n") and time.monotonic() < deadline and proc.poll() is None:
        chunk = os.read(read_fd, 16)  # Xvfb writes the number once it accepts connections
        if not chunk:
            break
        number += chunk
    os.close(read_fd)
    if not number.strip().isdigit():
        stop(proc)
        pytest.fail(f"Xvfb did not start (exit {proc.poll()})")
    display = f":{number.strip().decode()}"
    socket = f"/tmp/.X11-unix/X{number.strip().decode()}"
    while not os.path.exists(socket) and time.monotonic() < deadline:
        time.sleep(0.02)
    yield display
    stop(proc)


@pytest.fixture
def x11(xvfb_display, monkeypatch):
    """This test runs in the Xvfb session: DISPLAY set, no Wayland in sight."""
    monkeypatch.setenv("DISPLAY", xvfb_display)
    for name in ("WAYLAND_DISPLAY", "XDG_SESSION_TYPE", "SWAYSOCK", "HYPRLAND_INSTANCE_SIGNATURE"):
        monkeypatch.delenv(name, raising=False)
    return xvfb_display


@pytest.fixture(scope="session")
def session_bus():
    """A private D-Bus session bus; yields its address."""
    require_tools("dbus-daemon")
    proc = subprocess.Popen(
        ["dbus-daemon", "--session", "--nofork", "--nopidfile", "--print-address=1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    address = proc.stdout.readline().strip()
    if not address:
        stop(proc)
        pytest.fail("dbus-daemon printed no address")
    yield address
    stop(proc)


@pytest.fixture(scope="session")
def tk_available():
    code = "import tkinter; tkinter.Tcl()"
    if subprocess.run([sys.executable, "-c", code], capture_output=True).returncode != 0:
        unavailable("tkinter is not available to this Python (needed to draw the test window)")
