"""`pixdesk stdio` and `pixdesk mcp` as real subprocesses over pipes, with a private XDG tree per env.

Each env gets its own runtime/config/cache/state dirs (mode 0700, as platformdirs requires of
XDG_RUNTIME_DIR), so a test never touches the user's daemon; daemons a test started are killed by pid.
"""

from __future__ import annotations

import base64
import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.inputs.conftest import xvfb_display  # noqa: F401 - a fixture, re-exported for these tests

ROOT = Path(__file__).resolve().parents[2]


def _has_front(name: str) -> bool:
    argv = [sys.executable, "-m", "pixdesk", "--help"]
    out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    return out.returncode == 0 and name in out.stdout.split("positional arguments")[0]


_FRONTS: dict[str, list[str]] = {}


def command(front: str) -> list[str]:
    """`pixdesk stdio` when the CLI lists it, else `python -m pixdesk.server.stdio` (same for mcp)."""
    if front not in _FRONTS:
        _FRONTS[front] = (
            [sys.executable, "-m", "pixdesk", front]
            if _has_front(front)
            else [sys.executable, "-m", f"pixdesk.server.{front}"]
        )
    return _FRONTS[front]


def make_env(base: Path, **extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIXDESK_SERVER_PORT": "0", **extra}
    for var, sub in (("XDG_RUNTIME_DIR", "run"), ("XDG_CONFIG_HOME", "cfg"), ("XDG_CACHE_HOME", "cache"),
                     ("XDG_STATE_HOME", "state")):  # fmt: skip
        (base / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        env[var] = str(base / sub)
    for var in ("PIXDESK_CONFIG", "PIXDESK_MCP_ALLOW_SCREEN", "PIXDESK_NOTIFY_CMD"):
        env.pop(var, None)
    env.update(extra)
    return env


def discovery(env: dict) -> dict | None:
    try:
        return json.loads((Path(env["XDG_RUNTIME_DIR"]) / "pixdesk" / "daemon.json").read_text())
    except (OSError, ValueError):
        return None


def metric(env: dict, name: str) -> float:
    """One unlabelled value from the env's daemon /metrics."""
    import urllib.request

    info = discovery(env)
    key = Path(info["api_key_file"]).read_text().strip()
    req = urllib.request.Request(info["url"] + "/metrics", headers={"Authorization": f"Bearer {key}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for line in opener.open(req, timeout=10).read().decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def daemon_log(env: dict) -> str:
    path = Path(env["XDG_STATE_HOME"]) / "pixdesk" / "log" / "daemon.log"
    return path.read_text(errors="replace") if path.exists() else ""


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_daemon(env: dict, sig=signal.SIGTERM) -> None:
    info = discovery(env)
    if info:
        pid = int(info["pid"])
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 15
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


class Rpc:
    """One spawned front: write frames to its stdin, read every stdout line (each must be a frame)."""

    def __init__(self, argv: list[str], env: dict):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, cwd=ROOT)  # fmt: skip
        self.lines: queue.Queue = queue.Queue()
        self.raw: list[bytes] = []
        self.pending: list[dict] = []
        self.notes: list[dict] = []
        self.next_id = 0
        threading.Thread(target=self._pump, daemon=True).start()
        self.err: list[bytes] = []
        threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.raw.append(line)
            self.lines.put(json.loads(line))  # a non-JSON line fails the reader, and the test with it
        self.lines.put(None)

    def send(self, obj) -> None:
        self.send_raw(json.dumps(obj).encode() + b"\n")

    def send_raw(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def request(self, method: str, params: dict | None = None, rid=None):
        if rid is None:
            self.next_id += 1
            rid = self.next_id
        self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}})
        return rid

    def next_frame(self, timeout: float = 60.0) -> dict:
        frame = self.lines.get(timeout=timeout)
        assert frame is not None, "the process closed stdout: " + b"".join(self.err)[-2000:].decode()
        return frame

    def wait(self, rid, timeout: float = 60.0) -> dict:
        """The response to `rid`; notifications and other responses seen meanwhile are kept."""
        deadline = time.monotonic() + timeout
        while True:
            for msg in self.pending:
                if msg.get("id") == rid and "method" not in msg:
                    self.pending.remove(msg)
                    return msg
            frame = self.next_frame(max(deadline - time.monotonic(), 0.01))
            (self.notes if "method" in frame else self.pending).append(frame)

    def drain(self, timeout: float = 10.0) -> list[dict]:
        """Every frame left until stdout closes (after `close`)."""
        out = []
        while (frame := self.lines.get(timeout=timeout)) is not None:
            out.append(frame)
        return self.pending + out

    def call(self, method: str, params: dict | None = None, timeout: float = 60.0) -> dict:
        return self.wait(self.request(method, params), timeout)

    def close(self, timeout: float = 30.0) -> int:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def png_bytes(w=40, h=30, color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@pytest.fixture(scope="module")
def shared_env(tmp_path_factory):
    """One env (and so one daemon, started by the first client) for a module's tests."""
    env = make_env(tmp_path_factory.mktemp("xdg"))
    yield env
    kill_daemon(env)


@pytest.fixture
def fresh_env(tmp_path):
    env = make_env(tmp_path / "xdg")
    yield env
    kill_daemon(env, signal.SIGKILL)
