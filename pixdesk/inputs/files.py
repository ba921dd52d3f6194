"""Local image files, read by client processes (CLI, stdio bridge, MCP server) - never by the HTTP daemon.

SECURITY row 24: the real path (after `..` and symlinks) must lie inside the allowed folders when any are
given; only regular files are read (FIFOs, devices, sockets, /proc and /sys pseudo-files are refused); the
size cap is checked on the open descriptor (fstat), so a file swapped after the checks is still bounded; and
a missing file gets the same message as one that exists, so the errors cannot be used to probe the disk.
The mime type comes from the magic bytes, never from the file name.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterable
from pathlib import Path

from .errors import FileTooLarge, NotARegularFile, PathNotAllowed
from .pixels import DEFAULT_MAX_BYTES, ImageBytes, accepted_image

# Pseudo-filesystems whose files stat as regular but are not (/proc/self/environ: size 0, content secret).
PSEUDO_ROOTS = ("/proc", "/sys") if sys.platform.startswith("linux") else ()
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_COMMON = (
    os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOINHERIT", 0)
)


def read_image_file(
    path: str | os.PathLike[str],
    *,
    allowed_roots: Iterable[str | os.PathLike[str]] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ImageBytes:
    """The bytes and sniffed mime of the image file at `path`.

    allowed_roots: None reads anywhere the user can (the CLI's own arguments); a list (MCP roots, configured
    folders) confines reads to those folders.
    Raises PathNotAllowed, NotARegularFile, FileTooLarge (413), InvalidImage or UnsupportedImageFormat.
    """
    shown = os.fspath(path)
    real = os.path.realpath(os.path.abspath(shown))
    if allowed_roots is not None:
        check_contained(real, allowed_roots, shown)
    data = read_regular_file(real, max_bytes=max_bytes, shown=shown)
    return accepted_image(data, shown)


def check_contained(real: str, allowed_roots: Iterable[str | os.PathLike[str]], shown: str) -> None:
    """PathNotAllowed unless `real` (already resolved) is one of the roots or below one."""
    roots = [os.path.realpath(os.fspath(r)) for r in allowed_roots]
    target = os.path.normcase(real)
    for root in roots:
        base = os.path.normcase(root)
        try:
            if os.path.commonpath([target, base]) == base:
                return
        except ValueError:  # different drives on Windows
            continue
    where = ", ".join(roots) if roots else "no folder (none is allowed)"
    raise PathNotAllowed(f"{shown}: pixdesk may only read files inside {where}", param="path")


def read_regular_file(real: str, *, max_bytes: int, shown: str) -> bytes:
    """Up to max_bytes of the regular file at the resolved path `real`; typed errors otherwise."""
    if any(real == p or real.startswith(p + os.sep) for p in PSEUDO_ROOTS):
        raise _not_regular(shown)
    try:
        fd = _open_no_symlinks(real)
    except OSError:
        raise _not_regular(shown) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(shown)
        if st.st_size > max_bytes:
            raise FileTooLarge(
                f"{shown} is {st.st_size} bytes, over the {max_bytes}-byte image cap", param="path"
            )
        data = _read_at_most(fd, max_bytes + 1)
    except OSError:
        raise _not_regular(shown) from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # grew since fstat
        raise FileTooLarge(f"{shown} is over the {max_bytes}-byte image cap", param="path")
    if len(data) != st.st_size:  # a pseudo-file that reports one size and yields another
        raise _not_regular(shown)
    return data


def _not_regular(shown: str) -> NotARegularFile:
    # One text for missing, unreadable and special files alike (row 24: existence must not show).
    return NotARegularFile(
        f"{shown}: not a readable regular file (it is missing, unreadable, or a directory, device, FIFO, "
        "socket or pseudo-file)",
        param="path",
    )


def _open_no_symlinks(real: str) -> int:
    """Open the resolved path one component at a time with O_NOFOLLOW, so a directory or file swapped for a
    symlink after realpath() fails instead of leading elsewhere. O_NONBLOCK: opening a FIFO must not block."""
    flags = _O_COMMON | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    if os.name != "posix" or os.open not in os.supports_dir_fd or not _O_NOFOLLOW:
        return os.open(real, flags)
    parts = Path(real).parts  # ('/', 'home', 'me', 'a.png')
    dir_fd = os.open(parts[0], _O_COMMON | _O_DIRECTORY)
    try:
        for name in parts[1:-1]:
            next_fd = os.open(name, _O_COMMON | _O_DIRECTORY | _O_NOFOLLOW, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = next_fd
        if len(parts) == 1:
            return os.dup(dir_fd)  # "/" itself: a directory, refused by the caller's fstat
        return os.open(parts[-1], flags | _O_NOFOLLOW, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks, total = [], 0
    while total < limit:
        chunk = os.read(fd, min(1 << 20, limit - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)
