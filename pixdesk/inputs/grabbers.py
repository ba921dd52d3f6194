"""The grabbers behind screenshot.capture: mss (X11, Windows, macOS), grim (wlroots), screencapture -i.

Each returns captured RGB pixels (RawImage) where the tool gives pixels, or the tool's encoded PNG.
"""

from __future__ import annotations

import os
import tempfile

from pixdesk.errors import InvalidRequest

from . import geometry
from .errors import CaptureCancelled, CaptureFailed, CaptureUnavailable
from .files import read_regular_file
from .pixels import ImageBytes, RawImage, Rect, accepted_image, parse_ppm
from .proc import find_tool, run_tool

MAX_RAW_BYTES = 64_000_000 * 3 + 64  # ImageSettings.max_pixels of RGB, plus a PPM header
GRAB_TIMEOUT_S = 30.0


def _mss_factory():
    try:
        import mss
    except ImportError:  # pragma: no cover - a core dependency
        raise CaptureUnavailable("screen capture needs the Python package mss: pip install mss") from None
    return getattr(mss, "MSS", None) or mss.mss  # mss >= 10.2 deprecates the mss.mss() factory


def grab_mss(mode: str, monitor: int | None, rect: Rect | None, backend: str) -> RawImage:
    factory = _mss_factory()
    from mss.exception import ScreenShotError

    try:
        with factory() as sct:  # opened first: on Windows it makes the process DPI-aware
            monitors = [Rect(m["left"], m["top"], m["width"], m["height"]) for m in sct.monitors]
            box = _mss_box(mode, monitor, rect, backend, monitors, sct)
            shot = sct.grab({"left": box.x, "top": box.y, "width": box.w, "height": box.h})
            return RawImage(shot.rgb, shot.width, shot.height)
    except ScreenShotError as e:
        raise CaptureFailed(f"screen capture failed ({backend}): {e}") from None


def _mss_box(mode, monitor, rect, backend, monitors: list[Rect], sct) -> Rect:
    desktop = monitors[0]  # mss: [0] spans all monitors, [1:] are the monitors
    if mode == "full":
        return desktop
    if mode == "monitor":
        if monitor is None:
            primary = getattr(sct, "primary_monitor", None)
            return (
                Rect(primary["left"], primary["top"], primary["width"], primary["height"])
                if primary
                else monitors[1]
            )
        return pick_monitor(monitor, monitors[1:])
    if mode == "window":
        target = geometry.active_window(
            "win32" if backend == "windows" else "darwin" if backend == "macos" else "x11"
        )
    elif mode == "select":
        target = geometry.x11_select()
    else:
        target = rect
    inside = target.intersect(desktop)  # X11 refuses to read pixels outside the screen
    if inside is None:
        raise InvalidRequest(f"{mode} {target} lies outside the screen {desktop}", param="region")
    return inside


def pick_monitor(monitor: int, monitors: list[Rect]) -> Rect:
    if not 1 <= monitor <= len(monitors):
        listing = "; ".join(f"{i}: {m.w}x{m.h} at {m.x},{m.y}" for i, m in enumerate(monitors, 1))
        raise InvalidRequest(
            f"monitor must be 1..{len(monitors)} ({listing}), got {monitor}", param="monitor"
        )
    return monitors[monitor - 1]


def grab_grim(mode: str, monitor: int | None, rect: Rect | None) -> RawImage:
    grim = find_tool("grim", "screen capture on this Wayland compositor")
    argv = [grim, "-t", "ppm"]
    if mode == "monitor":
        outputs = geometry.wlroots_outputs()
        if monitor is not None:
            pick_monitor(monitor, [r for _, r in outputs])
        argv += ["-o", outputs[(monitor or 1) - 1][0]]
    elif mode != "full":
        area = rect if mode == "region" else geometry.wlroots_active_window() if mode == "window" else None
        area = area or geometry.wayland_select()
        argv += ["-g", f"{area.x},{area.y} {area.w}x{area.h}"]
    out = run_tool(argv + ["-"], timeout=GRAB_TIMEOUT_S, max_bytes=MAX_RAW_BYTES, what="the screen capture")
    if not out.ok:
        raise CaptureFailed(f"grim failed: {out.stderr or out.returncode}")
    return parse_ppm(out.stdout)


def grab_screencapture_select(max_bytes: int) -> ImageBytes:  # pragma: no cover - needs macOS
    tool = find_tool("screencapture", "interactive selection on macOS")
    with tempfile.TemporaryDirectory(prefix="pixdesk-snap-") as tmp:
        path = os.path.join(tmp, "select.png")
        argv = [tool, "-i", "-x", "-t", "png", path]
        out = run_tool(argv, timeout=geometry.SELECT_TIMEOUT_S, max_bytes=1 << 16, what="screencapture")
        if not os.path.exists(path):  # Esc leaves no file (exit status 0 or 1, by release)
            if out.ok:
                raise CaptureCancelled("the selection was cancelled")
            raise CaptureFailed(f"screencapture failed: {out.stderr or out.returncode}")
        return accepted_image(read_regular_file(path, max_bytes=max_bytes, shown=path), "the selection")
