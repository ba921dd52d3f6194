"""Typed errors of the desktop inputs (files, screen, clipboard), all PixdeskError subclasses.

Codes that pixdesk/errors.py does not list yet fall back to the nearest existing row, so these classes work
before and after the rows `path_not_allowed`, `not_a_regular_file`, `capture_unavailable`, `capture_failed`
and `clipboard_empty` are added to the table: the class keeps its name, only `code` follows the table.
"""

from __future__ import annotations

from pixdesk.errors import KINDS, Cancelled, ImageTooLarge, PixdeskError


def table_code(wanted: str, fallback: str) -> str:
    """`wanted` once the error table has that row, else `fallback` (an existing row)."""
    return wanted if wanted in KINDS else fallback


class PathNotAllowed(PixdeskError):
    """A path outside the allowed folders (after resolving `..` and symlinks); same text if it is missing."""

    code = table_code("path_not_allowed", "invalid_request")


class NotARegularFile(PixdeskError):
    """Missing, unreadable, a directory, device, FIFO, socket or pseudo-file (/proc, /sys): one message."""

    code = table_code("not_a_regular_file", "invalid_request")


class FileTooLarge(ImageTooLarge):
    """A file (or clipboard or capture) over the byte cap: 413 `image_too_large`."""


class CaptureUnavailable(PixdeskError):
    """No backend for this desktop, or a tool is missing; the message names what to install or allow."""

    code = table_code("capture_unavailable", "invalid_request")


class CaptureFailed(PixdeskError):
    """The backend ran but produced no image (tool error, portal refusal, timeout)."""

    code = table_code("capture_failed", "internal_error")


class CaptureCancelled(Cancelled):
    """The user dismissed an interactive selection or the portal dialog."""


class ClipboardEmpty(PixdeskError):
    """The clipboard holds no image; the message says what it holds instead."""

    code = table_code("clipboard_empty", "invalid_request")
