"""A real daemon for the CLI tests: `pixdesk serve --model TINY --port 0` as a subprocess, with its XDG dirs
in a temporary folder; the commands under test find it through the discovery file, as users' commands do.
The Xvfb fixtures of tests/inputs are reused for the desktop tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.inputs.conftest import tk_available, x11, xvfb_display  # noqa: F401 - fixtures shared here

ROOT = Path(__file__).resolve().parents[2]


def make_env(base: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **extra}
    for var, sub in (("XDG_RUNTIME_DIR", "run"), ("XDG_CONFIG_HOME", "cfg"), ("XDG_CACHE_HOME", "cache"),
                     ("XDG_STATE_HOME", "state")):  # fmt: skip
        (base / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        env[var] = str(base / sub)
    for var in ("PIXDESK_CONFIG", "WAYLAND_DISPLAY", "PIXDESK_NOTIFY_CMD"):
        env.pop(var, None)
    return env


def pixdesk(env: dict, *args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pixdesk", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, **kw)  # fmt: skip


@dataclass
class Daemon:
    env: dict
    url: str
    key: str
    proc: subprocess.Popen

    def metrics(self) -> str:
        req = urllib.request.Request(self.url + "/metrics", headers={"Authorization": f"Bearer {self.key}"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        return opener.open(req, timeout=10).read().decode()

    def requests(self, route: str) -> int:
        """HTTP requests the daemon has finished on `route`, any status."""
        labels = rf'method="[A-Z]+",route="{re.escape(route)}",status="\d+"'
        pattern = rf"^pixdesk_http_requests_total\{{{labels}\}} (\d+)"
        return sum(int(n) for n in re.findall(pattern, self.metrics(), re.M))


def start_daemon(env: dict, tiny_dir) -> Daemon:
    argv = [sys.executable, "-m", "pixdesk", "serve", "--model", str(tiny_dir), "--port", "0"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = Path(env["XDG_RUNTIME_DIR"]) / "pixdesk" / "daemon.json"
    deadline = time.monotonic() + 60
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the daemon did not start"
        time.sleep(0.05)
    info = json.loads(path.read_text())
    return Daemon(env, info["url"], Path(info["api_key_file"]).read_text().strip(), proc)


@pytest.fixture(scope="session")
def daemon(tmp_path_factory, tiny_dir):
    env = make_env(tmp_path_factory.mktemp("daemon-home"))
    d = start_daemon(env, tiny_dir)
    yield d
    d.proc.terminate()
    try:
        d.proc.wait(20)
    except subprocess.TimeoutExpired:
        d.proc.kill()


def settle(daemon: Daemon, timeout: float = 30.0) -> int:
    """Wait until the daemon is idle (nothing queued or active, request count steady); the task requests."""
    deadline = time.monotonic() + timeout
    last = -1
    while True:
        text = daemon.metrics()
        busy = re.findall(r"^pixdesk_(?:queue_depth\{[^}]*\}|active_sequences) (\d+)", text, re.M)
        count = daemon.requests("/v1/tasks/{name}")
        if not any(int(n) for n in busy) and count == last:
            return count
        assert time.monotonic() < deadline, "the daemon did not go idle"
        last = count
        time.sleep(0.3)
