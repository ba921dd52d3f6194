"""Desktop inputs, used by client processes only (CLI, stdio bridge, MCP server): screen, clipboard, files.

Everything here returns encoded image bytes + mime under a size cap and raises typed PixdeskErrors; nothing
here imports torch or decodes untrusted images (tokenizer/image.py does that, in whoever runs the model).
"""

from __future__ import annotations

from .clipboard import copy_text, read_clipboard_image
from .errors import (
    CaptureCancelled,
    CaptureFailed,
    CaptureUnavailable,
    ClipboardEmpty,
    FileTooLarge,
    NotARegularFile,
    PathNotAllowed,
)
from .files import read_image_file
from .pixels import ImageBytes, Rect
from .screenshot import Capture, capture, detect_backend
from .tiling import Downscale, TilePlan, plan_tiles

__all__ = [
    "Capture",
    "CaptureCancelled",
    "CaptureFailed",
    "CaptureUnavailable",
    "ClipboardEmpty",
    "Downscale",
    "FileTooLarge",
    "ImageBytes",
    "NotARegularFile",
    "PathNotAllowed",
    "Rect",
    "TilePlan",
    "capture",
    "copy_text",
    "detect_backend",
    "plan_tiles",
    "read_clipboard_image",
    "read_image_file",
]
