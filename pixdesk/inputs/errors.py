"""Typed errors of the desktop inputs (files, screen, clipboard): the shared table's classes, re-exported.

The rows live in pixdesk/errors.py (one table for every front); only the input-specific refinements are here.
"""

from __future__ import annotations

from pixdesk.errors import (  # noqa: F401 - re-exported for pixdesk.inputs
    Cancelled,
    CaptureFailed,
    CaptureUnavailable,
    ClipboardEmpty,
    ImageTooLarge,
    NotARegularFile,
    PathNotAllowed,
)


class FileTooLarge(ImageTooLarge):
    """A file (or clipboard or capture) over the byte cap: 413 `image_too_large`."""


class CaptureCancelled(Cancelled):
    """The user dismissed an interactive selection or the portal dialog."""
