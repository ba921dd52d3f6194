"""Screen capture: pick the backend this desktop allows, grab, warn about downscaling, tile on request.

Backends (detect_backend): "x11", "windows" and "macos" use mss; "portal" is the xdg-desktop-portal on GNOME
and KDE Wayland (mss only sees XWayland windows there); "grim" is wlroots Wayland (sway, Hyprland, river...).

| mode    | x11 / windows / macos            | grim (wlroots)              | portal (GNOME, KDE)          |
|---------|----------------------------------|-----------------------------|------------------------------|
| full    | all monitors                     | all outputs                 | the whole desktop            |
| monitor | monitor N (1-based; default: primary) | output N (swaymsg/hyprctl) | - (use select)           |
| region  | X,Y,W,H                          | X,Y,W,H                     | - (use select)               |
| window  | the active window                | focused window (sway/hypr)  | - (use select)               |
| select  | slop (X11) / screencapture -i    | slurp                       | the portal's own dialog      |
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pixdesk.errors import InvalidRequest

from .errors import CaptureFailed, CaptureUnavailable
from .pixels import DEFAULT_MAX_BYTES, ImageBytes, RawImage, Rect, check_size, encode_png, png_size
from .tiling import DEFAULT_OVERLAP, Downscale, downscale_warning, plan_tiles, tile_image

Mode = Literal["full", "monitor", "region", "window", "select"]
Backend = Literal["x11", "windows", "macos", "portal", "grim"]
MODES = ("full", "monitor", "region", "window", "select")
BACKENDS = ("x11", "windows", "macos", "portal", "grim")
WLROOTS = ("sway", "hyprland", "river", "wayfire", "labwc", "niri", "wlroots", "qtile", "dwl", "cage")


@dataclass(frozen=True)
class Capture:
    """What a capture hands over: images (one, or tiles in reading order) and what the user should know."""

    images: list[ImageBytes]
    width: int  # the whole capture, in pixels
    height: int
    backend: str
    tiles: list[Rect] = field(default_factory=list)  # where each image lies in the capture, when tiled
    downscale: Downscale | None = None  # set when the model would shrink the capture more than 2x
    notes: list[str] = field(default_factory=list)  # one line each, for the CLI to print


def detect_backend(env: Mapping[str, str] | None = None, platform: str | None = None) -> Backend:
    """The capture backend for this session, from the platform and WAYLAND_DISPLAY / XDG_CURRENT_DESKTOP /
    DISPLAY. On Wayland, DISPLAY (XWayland) is ignored: X11 capture would see only XWayland windows."""
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    if platform == "win32":
        return "windows"
    if platform == "darwin":
        return "macos"
    if env.get("WAYLAND_DISPLAY") or env.get("XDG_SESSION_TYPE") == "wayland":
        desktops = env.get("XDG_CURRENT_DESKTOP", "").lower().replace(";", ":").split(":")
        if (
            env.get("SWAYSOCK")
            or env.get("HYPRLAND_INSTANCE_SIGNATURE")
            or any(d in WLROOTS for d in desktops)
        ):
            return "grim"
        return "portal"  # GNOME, KDE, and any desktop whose compositor keeps screencopy private
    if env.get("DISPLAY"):
        return "x11"
    raise CaptureUnavailable(
        "no display to capture: neither WAYLAND_DISPLAY nor DISPLAY is set "
        "(run this inside your desktop session)"
    )


def capture(
    mode: Mode = "full",
    *,
    monitor: int | None = None,
    region: tuple[int, int, int, int] | Rect | None = None,
    tile: bool = False,
    max_image_size: int = 1024,
    overlap: int = DEFAULT_OVERLAP,
    max_images: int = 12,
    max_bytes: int = DEFAULT_MAX_BYTES,
    backend: Backend | None = None,
) -> Capture:
    """Capture the screen as PNG bytes. `monitor` is 1-based; `region` is (x, y, w, h) in screen pixels.

    With tile=True a capture larger than max_image_size comes back as up to max_images overlapping tiles; a
    capture that the model would shrink more than 2x untiled gets a `downscale` notice naming the tile count.
    """
    if mode not in MODES:
        raise InvalidRequest(f"mode must be one of {', '.join(MODES)}, got {mode!r}", param="mode")
    rect = _region(mode, region)
    backend = backend or detect_backend()
    if backend not in BACKENDS:
        raise InvalidRequest(
            f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}", param="backend"
        )
    grabbed = _grab(backend, mode, monitor, rect, max_bytes)
    return assemble(
        grabbed,
        backend=backend,
        tile=tile,
        max_image_size=max_image_size,
        overlap=overlap,
        max_images=max_images,
        max_bytes=max_bytes,
    )


def assemble(
    grabbed: RawImage | ImageBytes,
    *,
    backend: str,
    tile: bool = False,
    max_image_size: int = 1024,
    overlap: int = DEFAULT_OVERLAP,
    max_images: int = 12,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Capture:
    """A Capture from grabbed pixels (encoded to PNG, tiled on request) or from a tool's encoded PNG."""
    if isinstance(grabbed, RawImage):
        return _from_pixels(grabbed, backend, tile, max_image_size, overlap, max_images, max_bytes)
    return _from_encoded(grabbed, backend, tile, max_image_size, overlap, max_images)


def _region(mode: str, region) -> Rect | None:
    if mode != "region":
        if region is not None:
            raise InvalidRequest(f"a region is only used with mode='region', not {mode!r}", param="region")
        return None
    if region is None:
        raise InvalidRequest("mode 'region' needs region=(x, y, w, h)", param="region")
    rect = region if isinstance(region, Rect) else Rect(*(int(v) for v in region))
    if rect.w <= 0 or rect.h <= 0:
        raise InvalidRequest(
            f"region width and height must be positive, got {rect.w}x{rect.h}", param="region"
        )
    return rect


def _grab(backend: str, mode: str, monitor: int | None, rect: Rect | None, max_bytes: int):
    if backend == "portal":
        from .portal import portal_screenshot

        if mode not in ("full", "select"):
            raise CaptureUnavailable(
                f"the screenshot portal (GNOME/KDE Wayland) cannot capture a {mode} directly; use select, "
                "whose dialog offers a window or an area, or full"
            )
        return portal_screenshot(interactive=mode == "select", max_bytes=max_bytes)
    if backend == "grim":
        from .grabbers import grab_grim

        return grab_grim(mode, monitor, rect)
    if mode == "select" and backend == "macos":
        from .grabbers import grab_screencapture_select

        return grab_screencapture_select(max_bytes)
    if mode == "select" and backend == "windows":
        raise CaptureUnavailable(
            "interactive selection is not available on Windows: press Win+Shift+S (Snipping Tool copies the "
            "area to the clipboard) and use the clipboard instead, or give a region"
        )
    from .grabbers import grab_mss

    return grab_mss(mode, monitor, rect, backend)


def _from_pixels(raw: RawImage, backend, tile, max_image_size, overlap, max_images, max_bytes) -> Capture:
    warn = downscale_warning(raw.width, raw.height, max_image_size, overlap=overlap, max_tiles=max_images)
    hint = " (capture a smaller region, or use --tile)"
    if tile and max(raw.width, raw.height) > max_image_size:
        plan = plan_tiles(raw.width, raw.height, max_image_size, overlap=overlap, max_tiles=max_images)
        images = [
            ImageBytes(check_size(im.data, max_bytes, "a tile", hint), im.mime)
            for im in tile_image(raw, plan)
        ]
        notes = [plan.describe()]
        if max(plan.tile_w, plan.tile_h) > max_image_size:
            notes.append(
                f"{max_images} images are allowed per request, so each tile is a little over "
                f"{max_image_size} px and will be shrunk slightly"
            )
        return Capture(images, raw.width, raw.height, backend, plan.rects, None, notes)
    data = check_size(encode_png(raw), max_bytes, "the capture", hint)
    notes = [warn.message] if warn else []
    return Capture([ImageBytes(data, "image/png")], raw.width, raw.height, backend, [], warn, notes)


def _from_encoded(image: ImageBytes, backend, tile, max_image_size, overlap, max_images) -> Capture:
    size = png_size(image.data)
    if size is None:
        raise CaptureFailed(f"the {backend} backend returned {image.mime}, not a PNG")
    width, height = size
    warn = downscale_warning(width, height, max_image_size, overlap=overlap, max_tiles=max_images)
    notes = [warn.message] if warn else []
    if tile and max(width, height) > max_image_size:
        # The pixels arrive encoded, and inputs never decode images (only tokenizer/image.py does).
        notes.append(
            f"tiling is not available with the {backend} backend (it returns an encoded PNG); "
            "sent as one image - select a smaller area instead"
        )
    return Capture([image], width, height, backend, [], warn, notes)
