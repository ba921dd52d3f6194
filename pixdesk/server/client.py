"""The CLI's side of the daemon: find it through the discovery file, call it, start it detached, stop it.

Plain urllib with proxies disabled (a proxy from the environment must never see the API key or the
loopback traffic).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from pixdesk.config import log_dir, runtime_dir
from pixdesk.errors import InvalidConfig
from pixdesk.server.discovery import InstanceLock, read_api_key, read_discovery

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class DaemonClient:
    def __init__(self, info: dict):
        self.info = info
        self.url = info["url"]
        self.pid = int(info["pid"])

    @classmethod
    def find(cls) -> DaemonClient | None:
        info = read_discovery(runtime_dir())
        return cls(info) if info else None

    def key(self) -> str:
        return read_api_key(Path(self.info["api_key_file"]))

    def call(self, method: str, path: str, body: dict | None = None, *, auth: bool = True,
             timeout: float = 10.0) -> tuple[int, dict]:  # fmt: skip
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", f"Bearer {self.key()}")
        try:
            with _OPENER.open(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            try:
                return err.code, json.loads(err.read() or b"{}")
            except ValueError:
                return err.code, {}
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise InvalidConfig(f"the daemon at {self.url} does not answer ({exc})") from None

    def stop(self, timeout: float) -> bool:
        """SIGTERM, then wait for the lock to be released. True when the daemon is gone."""
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return True
        lock = InstanceLock(runtime_dir())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not lock.held_by_other():
                return True
            time.sleep(0.1)
        return False


def start_detached(argv: list[str], timeout: float = 120.0) -> DaemonClient:
    """Run `pixdesk serve ARGV` in its own session, output to the log file; wait for its discovery file."""
    logs = log_dir()
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / "daemon.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pixdesk", "serve", *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        client = DaemonClient.find()
        if client is not None and client.pid == proc.pid:
            return client
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise InvalidConfig(
                f"the daemon exited with status {proc.returncode}; its log ({log_path}) ends:\n{tail}"
            )
        time.sleep(0.1)
    raise InvalidConfig(f"the daemon did not start within {timeout:g} s; see {log_path}")
