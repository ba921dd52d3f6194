"""Images named by a stdio or MCP client -> what the daemon accepts (data: URIs and http(s) URLs).

The daemon never reads a path or the screen (SECURITY row 24): this process does, in the user's session.

    "data:image/png;base64,..."      passed through (the daemon size-checks and decodes it)
    "https://..."                    passed through (the daemon fetches it, SSRF-guarded)
    "/abs/path.png", "file:///..."   read here by inputs/files.py (realpath containment when roots are set)
    {"path": ...} {"url": ...}       the same, as objects
    {"source": "screen" | "window" | "region" | "clipboard", "region": [x, y, w, h], "monitor": N}
                                     captured here; an MCP agent needs the user's opt-in, and every capture
                                     it makes is announced by a desktop notification first (row 25)
"""

from __future__ import annotations

import asyncio
import base64
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from urllib.parse import unquote, urlsplit

from pixdesk.errors import CaptureNotAllowed, InvalidRequest, PixdeskError

SOURCES = ("screen", "window", "region", "clipboard")
NOTIFY_TIMEOUT_S = 5.0
Roots = Callable[[], Awaitable[list[str] | None]]


class ImageResolver:
    """allow_capture: capture sources are served at all. announce: notify the desktop before each capture.
    roots: None reads files anywhere the user can; an async callable gives the folders files must lie in."""

    def __init__(self, *, max_bytes: int, max_pixels: int, allow_capture: bool = True, announce: bool = False,
                 roots: Roots | None = None, client: str = "a pixdesk client"):  # fmt: skip
        self.max_bytes, self.max_pixels = max_bytes, max_pixels
        self.allow_capture, self.announce, self.roots, self.client = allow_capture, announce, roots, client

    async def resolve(self, spec, where: str) -> str:
        """`spec` -> a data: URI or http(s) URL; errors name `where` (e.g. messages[0].content[1])."""
        try:
            return await self._resolve(spec, where)
        except PixdeskError as exc:
            if exc.param in (None, "path", "region", "mode", "monitor"):
                exc.param = where
            raise

    async def _resolve(self, spec, where: str) -> str:
        if isinstance(spec, str):
            return await self._from_string(spec, where)
        if not isinstance(spec, dict):
            raise InvalidRequest(f"{where} must be a string or an object", param=where)
        keys = [k for k in ("path", "url", "data", "source") if k in spec]
        if len(keys) != 1:
            raise InvalidRequest(f"{where} needs exactly one of path, url, data, source", param=where)
        value = spec[keys[0]]
        if keys[0] == "source":
            return await self.capture(value, spec.get("region"), spec.get("monitor"), where)
        if not isinstance(value, str) or not value:
            raise InvalidRequest(f"{where}.{keys[0]} must be a non-empty string", param=f"{where}.{keys[0]}")
        if keys[0] == "path":
            return await self.read_file(value, f"{where}.path")
        return await self._from_string(value, f"{where}.{keys[0]}")

    async def _from_string(self, value: str, where: str) -> str:
        head = value[:8].lower()
        if head.startswith("data:") or head.startswith("http://") or head.startswith("https://"):
            return value
        if head.startswith("file:"):
            parts = urlsplit(value)
            if parts.netloc not in ("", "localhost"):
                raise InvalidRequest(f"{where}: file: URLs must name a local file", param=where)
            return await self.read_file(unquote(parts.path), where)
        if value in SOURCES:
            return await self.capture(value, None, None, where)
        return await self.read_file(value, where)

    async def read_file(self, path: str, where: str) -> str:
        from pixdesk.inputs import read_image_file

        roots = await self.roots() if self.roots is not None else None
        img = await asyncio.to_thread(
            read_image_file, os.path.expanduser(path), allowed_roots=roots, max_bytes=self.max_bytes
        )
        return _data_uri(img.data, img.mime)

    async def capture(self, source, region, monitor, where: str) -> str:
        if source not in SOURCES:
            raise InvalidRequest(
                f"{where}.source must be one of {', '.join(SOURCES)}", param=f"{where}.source"
            )
        if not self.allow_capture:
            raise CaptureNotAllowed(
                f"{where}: screen and clipboard capture is off for MCP clients; the user can allow it by "
                "starting the server with `pixdesk mcp --allow-screen` (or PIXDESK_MCP_ALLOW_SCREEN=1)",
                param=where,
            )
        if region is not None and (
            not isinstance(region, list) or len(region) != 4 or not all(type(v) is int for v in region)
        ):
            raise InvalidRequest(
                f"{where}.region must be [x, y, width, height] in pixels", param=f"{where}.region"
            )
        if monitor is not None and (type(monitor) is not int or monitor < 1):
            raise InvalidRequest(f"{where}.monitor must be a positive integer", param=f"{where}.monitor")
        if self.announce:
            await asyncio.to_thread(notify, f"pixdesk: {self.client} is reading your {_what(source)}")
        img = await asyncio.to_thread(self._grab, source, region, monitor)
        return _data_uri(img.data, img.mime)

    def _grab(self, source: str, region, monitor):
        from pixdesk.inputs import capture, read_clipboard_image

        if source == "clipboard":
            return read_clipboard_image(max_bytes=self.max_bytes, max_pixels=self.max_pixels)
        mode = {"screen": "monitor" if monitor else "full", "window": "window", "region": "region"}[source]
        if source == "region" and region is None:
            raise InvalidRequest("source 'region' needs region: [x, y, width, height]", param="region")
        shot = capture(
            mode, monitor=monitor, region=tuple(region) if region else None, max_bytes=self.max_bytes
        )
        return shot.images[0]


def _what(source: str) -> str:
    return {"clipboard": "clipboard", "window": "active window", "region": "screen (a region)"}.get(
        source, "screen"
    )


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def notify(body: str) -> None:
    """Show a desktop notification, or refuse the capture: an agent's capture is never silent (row 25).

    PIXDESK_NOTIFY_CMD (a command line; the title and body are appended as two arguments) replaces the
    platform's notifier: notify-send (Linux, BSD), osascript (macOS), PowerShell (Windows).
    """
    title = "pixdesk screen capture"
    custom = os.environ.get("PIXDESK_NOTIFY_CMD")
    if custom:
        argv = [*shlex.split(custom), title, body]
    elif sys.platform == "darwin":
        argv = [
            "osascript",
            "-e",
            f"display notification {_applescript(body)} with title {_applescript(title)}",
        ]
    elif sys.platform == "win32":
        text = body.replace("'", "''")
        argv = ["powershell", "-NoProfile", "-Command", f"[console]::beep(880,120); Write-Host '{text}'"]
    else:
        argv = ["notify-send", "--app-name=pixdesk", "--urgency=normal", title, body]
    if shutil.which(argv[0]) is None:
        raise CaptureNotAllowed(
            f"cannot announce the capture: {argv[0]} is not installed (install libnotify's notify-send, or "
            "set PIXDESK_NOTIFY_CMD to a command that shows a notification); the capture was not made"
        )
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=NOTIFY_TIMEOUT_S, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CaptureNotAllowed(
            f"the capture notification failed ({type(exc).__name__}); no capture made"
        ) from None
    if done.returncode != 0:
        raise CaptureNotAllowed(
            f"the capture notification failed ({argv[0]} exited {done.returncode}); no capture was made"
        )


def _applescript(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
