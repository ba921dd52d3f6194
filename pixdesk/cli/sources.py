"""Images for a command, read or captured here in the user's session: files, the screen, the clipboard.

The daemon only ever receives the bytes (as data URIs); files go through inputs/files.py (regular files
only, size cap on the open descriptor), captures through inputs/screenshot.py, the clipboard through
inputs/clipboard.py. Capture notes (downscaling, tiling) are printed to stderr.
"""

from __future__ import annotations

import argparse

from pixdesk.cli.common import err
from pixdesk.config import Settings
from pixdesk.errors import TooManyImages
from pixdesk.inputs import Capture, ImageBytes, capture, read_clipboard_image, read_image_file
from pixdesk.inputs.geometry import parse_region

MODES = ("full", "monitor", "region", "window", "select")


def capture_flags(p: argparse.ArgumentParser, *, window_help: str = "the active window") -> None:
    """--full | --monitor N | --region X,Y,W,H | --window | --select, and --tile."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--full", dest="mode", action="store_const", const="full", help="every monitor")
    g.add_argument("--monitor", type=int, metavar="N", help="monitor N (1-based)")
    g.add_argument("--region", metavar="X,Y,W,H", help="this rectangle of the screen, in pixels")
    g.add_argument("--window", dest="mode", action="store_const", const="window", help=window_help)
    g.add_argument(
        "--select",
        dest="mode",
        action="store_const",
        const="select",
        help="drag a rectangle (slop, slurp, the portal dialog, screencapture -i)",
    )
    p.add_argument(
        "--tile",
        action="store_true",
        help="send a large capture as overlapping tiles the model sees unshrunk",
    )
    return g


def chosen_mode(ns: argparse.Namespace, default: str | None) -> str | None:
    if ns.monitor is not None:
        return "monitor"
    if ns.region is not None:
        parse_region(ns.region)  # a typo fails now, before a model loads or a daemon starts
        return "region"
    return ns.mode or default


def grab_screen(ns: argparse.Namespace, mode: str, settings: Settings, max_image_size: int) -> Capture:
    region = parse_region(ns.region) if mode == "region" else None
    shot = capture(
        mode,  # type: ignore[arg-type]
        monitor=ns.monitor,
        region=region,
        tile=ns.tile,
        max_image_size=max_image_size,
        max_images=settings.images.max_images,
        max_bytes=settings.images.max_bytes,
    )
    err(f"pixdesk: captured {shot.width}x{shot.height} px ({shot.backend})")
    for note in shot.notes:
        err(f"pixdesk: note: {note}")
    return shot


def read_files(paths: list[str], settings: Settings) -> list[ImageBytes]:
    return [read_image_file(p, max_bytes=settings.images.max_bytes) for p in paths]


def read_clipboard(settings: Settings) -> ImageBytes:
    image = read_clipboard_image(max_bytes=settings.images.max_bytes, max_pixels=settings.images.max_pixels)
    err(f"pixdesk: read a {image.mime} image from the clipboard ({len(image.data)} bytes)")
    return image


def gather(
    ns: argparse.Namespace,
    settings: Settings,
    files: list[ImageBytes],
    max_image_size: int,
    *,
    screen_mode: str | None,
) -> list[ImageBytes]:
    """Files (already read: a bad path fails before any model loads), then the screenshot (or its tiles),
    then the clipboard image."""
    images = list(files)
    if screen_mode:
        images += grab_screen(ns, screen_mode, settings, max_image_size).images
    if getattr(ns, "clipboard", False):
        images.append(read_clipboard(settings))
    check_count(images, settings)
    return images


def check_count(images: list[ImageBytes], settings: Settings) -> None:
    limit = settings.images.max_images
    if len(images) > limit:
        raise TooManyImages(
            f"{len(images)} images; the limit is {limit} per request (images.max_images): give fewer files, "
            "or capture a smaller area instead of tiling"
        )
