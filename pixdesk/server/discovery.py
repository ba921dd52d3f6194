"""Files the daemon shares with its clients: the API key, the single-instance lock and the discovery file.

- API key: `user_config_dir/api_key`, created on first start with mode 0600 and stable until rotated. The
  daemon refuses a key file that is group/world-accessible, not a regular file, or owned by someone else.
- Lock: `user_runtime_dir/daemon.lock`, an advisory lock held for the daemon's life (one daemon per user).
- Discovery: `user_runtime_dir/daemon.json` = {pid, url, version, api_key_file}, replaced atomically, so a
  client never reads half a file. Clients check the lock too: a discovery file without a lock holder is stale.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from pathlib import Path

from pixdesk.errors import InvalidConfig

KEY_FILE = "api_key"
LOCK_FILE = "daemon.lock"
DISCOVERY_FILE = "daemon.json"
_POSIX = os.name == "posix"


class DaemonRunning(InvalidConfig):
    """Another daemon holds the lock."""


# --------------------------------------------------------------------------------------------- API key


def new_api_key() -> str:
    return "pxd-" + secrets.token_urlsafe(32)


def read_api_key(path: Path, *, create: bool = False) -> str:
    """The key in `path`, after checking who can read it; with create=True a missing file is made (0600)."""
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            _write_private(path, new_api_key(), exclusive=True)
        except FileExistsError:  # another process created it first: read theirs
            pass
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise InvalidConfig(
            f"no API key at {path}; start the daemon once (pixdesk serve) to create it"
        ) from None
    except OSError as exc:  # a symlink (O_NOFOLLOW), a directory, no permission
        raise InvalidConfig(
            f"cannot read the API key file {path} ({exc.strerror}); it must be a regular file"
        ) from None
    with os.fdopen(fd) as f:
        _check_private(path, os.fstat(f.fileno()))
        key = f.read().strip()
    if len(key) < 16 or not key.isascii() or not key.isprintable():
        raise InvalidConfig(f"the API key in {path} is malformed; replace it with `pixdesk token --rotate`")
    return key


def rotate_api_key(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    key = new_api_key()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _write_private(tmp, key, exclusive=False)
    os.replace(tmp, path)
    return key


def _check_private(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise InvalidConfig(f"refusing to use {path}: the API key must be a regular file")
    if not _POSIX:  # Windows: the user profile's ACLs protect the config dir
        return
    if st.st_uid != os.getuid():
        raise InvalidConfig(
            f"refusing to use {path}: it is owned by uid {st.st_uid}, not by you (uid {os.getuid()})"
        )
    if st.st_mode & 0o077:
        raise InvalidConfig(
            f"refusing to use {path}: its mode is {stat.S_IMODE(st.st_mode):o}, so other users can read it; "
            f"run `chmod 600 {path}` and then `pixdesk token --rotate`, as the key may have leaked"
        )


def _write_private(path: Path, text: str, *, exclusive: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC) | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w") as f:
        if _POSIX:
            os.fchmod(f.fileno(), 0o600)  # O_TRUNC on an existing file keeps its old mode
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------------------------- runtime dir


def private_dir(path: Path) -> Path:
    """Create the runtime dir 0700; refuse one that another user owns or can enter (e.g. pre-made in /tmp)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if _POSIX:
        st = os.stat(path, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise InvalidConfig(f"refusing to use {path}: not a directory owned by you")
        if st.st_mode & 0o077:
            os.chmod(path, 0o700)
    return path


class InstanceLock:
    """Advisory lock on `dir/daemon.lock`, held while the daemon runs; the OS drops it with the process."""

    def __init__(self, directory: Path):
        self.path = directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if not _try_lock(fd):
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None

    def held_by_other(self) -> bool:
        """True while some process (not this object) holds the lock."""
        if not self.path.exists():
            return False
        if not self.acquire():
            return True
        self.release()
        return False


def _try_lock(fd: int) -> bool:
    if _POSIX:
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True
    import msvcrt  # pragma: no cover - Windows

    try:  # pragma: no cover
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:  # pragma: no cover
        return False
    return True  # pragma: no cover


# --------------------------------------------------------------------------------------------- discovery


def write_discovery(directory: Path, info: dict) -> Path:
    path = directory / DISCOVERY_FILE
    tmp = directory / f".{DISCOVERY_FILE}.{os.getpid()}.tmp"
    _write_private(tmp, json.dumps(info, sort_keys=True), exclusive=False)
    os.replace(tmp, path)
    return path


def read_discovery(directory: Path) -> dict | None:
    """The running daemon's {pid, url, version, api_key_file}, or None if none runs (stale files ignored)."""
    path = directory / DISCOVERY_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not {"pid", "url", "api_key_file"} <= info.keys():
        return None
    if not InstanceLock(directory).held_by_other():
        return None
    return info


def remove_discovery(directory: Path, pid: int) -> None:
    """Remove the discovery file if it still names `pid` (a newer daemon's file is left alone)."""
    path = directory / DISCOVERY_FILE
    try:
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass
