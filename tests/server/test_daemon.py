"""The daemon's files and life: key file rules (row 7), bind policy (row 8), lock and discovery, loading
(row 30), and `pixdesk serve/status/token/stop/open` as real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pixdesk.errors import InvalidConfig
from pixdesk.server.app import create_app
from pixdesk.server.daemon import check_bind_host
from pixdesk.server.discovery import (
    InstanceLock,
    read_api_key,
    read_discovery,
    remove_discovery,
    rotate_api_key,
    write_discovery,
)
from tests.server.conftest import API_KEY, Live, ServerThread, make_engine, make_settings, skip_or_fail

# ------------------------------------------------------------------------------------------ row 7: the key


def test_key_is_created_private_and_stable(tmp_path):
    path = tmp_path / "cfg" / "api_key"
    key = read_api_key(path, create=True)
    assert (path.stat().st_mode & 0o777) == 0o600 and len(key) > 30
    assert read_api_key(path, create=True) == key == read_api_key(path)
    new = rotate_api_key(path)
    assert new != key and read_api_key(path) == new and (path.stat().st_mode & 0o777) == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o666])
def test_leaky_key_file_is_refused(tmp_path, mode):
    path = tmp_path / "api_key"
    read_api_key(path, create=True)
    path.chmod(mode)
    with pytest.raises(InvalidConfig, match="chmod 600"):
        read_api_key(path)


def test_key_file_owned_by_someone_else_or_a_symlink_is_refused(tmp_path):
    path = tmp_path / "api_key"
    key = read_api_key(path, create=True)
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(InvalidConfig, match="regular file"):
        read_api_key(link)
    if os.getuid() != 0:
        skip_or_fail("changing a file's owner needs root (CI runs as root)")
    os.chown(path, 65534, 65534)
    with pytest.raises(InvalidConfig, match="owned by uid 65534"):
        read_api_key(path)
    assert key


def test_missing_key_without_create_says_how(tmp_path):
    with pytest.raises(InvalidConfig, match="pixdesk serve"):
        read_api_key(tmp_path / "none")


# ------------------------------------------------------------------------------------------ row 8: bind


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "example.com"])
def test_non_loopback_bind_needs_opt_in(host):
    with pytest.raises(InvalidConfig, match="--allow-remote"):
        check_bind_host(host, allow_remote=False)
    check_bind_host(host, allow_remote=True)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_binds_are_fine(host):
    check_bind_host(host, allow_remote=False)


# ------------------------------------------------------------------------------------------ lock, discovery


def test_lock_is_exclusive_and_discovery_needs_a_holder(tmp_path):
    a, b = InstanceLock(tmp_path), InstanceLock(tmp_path)
    assert a.acquire() and not b.acquire() and b.held_by_other()
    info = {"pid": os.getpid(), "url": "http://127.0.0.1:1", "version": "x", "api_key_file": "/k"}
    write_discovery(tmp_path, info)
    assert read_discovery(tmp_path) == info
    assert (tmp_path / "daemon.json").stat().st_mode & 0o777 == 0o600
    a.release()
    assert read_discovery(tmp_path) is None  # stale: nobody holds the lock
    remove_discovery(tmp_path, pid=1)  # another pid's call leaves the file alone
    assert (tmp_path / "daemon.json").exists()
    remove_discovery(tmp_path, pid=os.getpid())
    assert not (tmp_path / "daemon.json").exists()


# ------------------------------------------------------------------------------------------ row 30: loading


class SlowLoader:
    def __init__(self, engine=None, error=None):
        self.release, self.engine, self.error = threading.Event(), engine, error

    def __call__(self, progress):
        progress(0.5)
        self.release.wait(30)
        if self.error:
            raise self.error
        return self.engine


def test_requests_wait_while_the_model_loads(tiny_dir):
    engine = make_engine(tiny_dir, max_batch=2)
    engine.stop()  # the slot starts what the loader returns
    loader = SlowLoader(engine=make_engine(tiny_dir, max_batch=2))
    settings = make_settings(server={"load_wait_s": 20.0})
    with ServerThread(create_app(loader, settings, API_KEY), settings) as srv:
        live = Live(srv.port, loader.engine, None, None)
        status, _, body = live.request("GET", "/health", key=False)
        assert (status, body) == (503, {"status": "loading", "progress": 0.5, "phase": "weights"})
        result = []
        waiter = threading.Thread(target=lambda: result.append(live.chat("hi")))
        waiter.start()
        time.sleep(0.3)
        assert not result  # waiting, not failed
        loader.release.set()
        waiter.join(20)
        assert result[0][0] == 200
        assert live.request("GET", "/health", key=False)[2] == {"status": "ready"}
    loader.engine.stop()


class WarmingEngine:
    """A loaded engine whose start() (the GPU warm-up) runs until released."""

    def __init__(self, engine):
        self.engine, self.release = engine, threading.Event()

    def start(self):
        self.release.wait(30)
        return self

    def __getattr__(self, name):
        return getattr(self.engine, name)


def test_health_says_when_the_weights_are_in_and_the_engine_warms_up(tiny_dir):
    engine = WarmingEngine(make_engine(tiny_dir, max_batch=2))
    settings = make_settings(server={"load_wait_s": 0.2})
    with ServerThread(create_app(lambda progress: engine, settings, API_KEY), settings) as srv:
        live = Live(srv.port, engine.engine, None, None)
        deadline = time.monotonic() + 10
        while live.request("GET", "/health", key=False)[2].get("phase") != "warm-up":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        status, _, body = live.request("GET", "/health", key=False)
        assert (status, body) == (503, {"status": "loading", "progress": 1.0, "phase": "warm-up"})
        status, _, body = live.chat("hi")
        assert status == 503 and "compiling and warming up" in body["error"]["message"]
        engine.release.set()
        deadline = time.monotonic() + 10
        while live.request("GET", "/health", key=False)[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert live.chat("hi")[0] == 200
    engine.engine.stop()


def test_loading_wait_is_bounded_and_failures_are_reported(tiny_dir):
    loader = SlowLoader(error=RuntimeError("disk on fire /secret/path"))
    settings = make_settings(server={"load_wait_s": 0.3})
    with ServerThread(create_app(loader, settings, API_KEY), settings) as srv:
        live = Live(srv.port, None, None, None)
        status, headers, body = live.chat("hi")
        assert (status, body["error"]["code"]) == (503, "model_loading") and headers["retry-after"] == "5"
        loader.release.set()
        time.sleep(0.2)
        status, _, body = live.chat("hi")
        assert (status, body["error"]["code"]) == (503, "model_unavailable")
        assert "secret" not in body["error"]["message"]
        assert live.request("GET", "/health", key=False)[:3:2] == (503, {"status": "failed"})


# ------------------------------------------------------------------------------------------ the CLI


@pytest.fixture()
def env(tmp_path):
    e = {**os.environ, "PYTHONPATH": os.getcwd()}
    for var, sub in (
        ("XDG_RUNTIME_DIR", "run"),
        ("XDG_CONFIG_HOME", "cfg"),
        ("XDG_CACHE_HOME", "cache"),
        ("XDG_STATE_HOME", "state"),
    ):
        (tmp_path / sub).mkdir(mode=0o700)
        e[var] = str(tmp_path / sub)
    e.pop("PIXDESK_CONFIG", None)
    return e


def pixdesk(env, *args, timeout=120, **kw):
    return subprocess.run(
        [sys.executable, "-m", "pixdesk", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        **kw,
    )


def wait_for_discovery(env, proc=None, timeout=60) -> dict:
    path = Path(env["XDG_RUNTIME_DIR"]) / "pixdesk" / "daemon.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        if proc is not None and proc.poll() is not None:
            raise AssertionError(proc.stderr.read())
        time.sleep(0.05)
    raise AssertionError("no discovery file")


def test_serve_status_token_stop(env, tiny_dir):
    import openai

    proc = subprocess.Popen(
        [sys.executable, "-m", "pixdesk", "serve", "--model", str(tiny_dir), "--port", "0"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        info = wait_for_discovery(env, proc)
        assert info["pid"] == proc.pid and info["url"].startswith("http://127.0.0.1:")
        key_file = Path(info["api_key_file"])
        assert key_file.stat().st_mode & 0o777 == 0o600
        token = pixdesk(env, "token")
        assert token.returncode == 0 and token.stdout.strip() == key_file.read_text().strip()
        deadline = time.monotonic() + 60
        while "ready" not in (status := pixdesk(env, "status")).stdout:
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        assert info["url"] in status.stdout and str(proc.pid) in status.stdout
        client = openai.OpenAI(base_url=info["url"] + "/v1", api_key=token.stdout.strip(), max_retries=0)
        answer = client.chat.completions.create(
            model="x", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert answer.usage.completion_tokens >= 1
        second = pixdesk(env, "serve", "--model", str(tiny_dir), "--port", "0")
        assert second.returncode == 2 and "already running" in second.stderr
        stop = pixdesk(env, "stop")
        assert stop.returncode == 0, stop.stderr
        assert proc.wait(30) == 0
        assert not (Path(env["XDG_RUNTIME_DIR"]) / "pixdesk" / "daemon.json").exists()
        assert pixdesk(env, "status").returncode == 3
        log = proc.stderr.read()
        assert "listening on" in log and token.stdout.strip() not in log and "Traceback" not in log
    finally:
        if proc.poll() is None:
            proc.kill()


def test_stop_lets_in_flight_streams_finish(env, tiny_dir):
    proc = subprocess.Popen(
        [sys.executable, "-m", "pixdesk", "serve", "--model", str(tiny_dir), "--port", "0"],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        info = wait_for_discovery(env, proc)
        key = Path(info["api_key_file"]).read_text().strip()
        import openai

        client = openai.OpenAI(base_url=info["url"] + "/v1", api_key=key, max_retries=0)
        stream = client.chat.completions.create(
            model="x",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=200,
            temperature=0,
            stream=True,
        )
        first = next(iter(stream))
        os.kill(proc.pid, signal.SIGTERM)  # what `pixdesk stop` sends
        rest = list(stream)
        assert first.choices[0].delta.role == "assistant"
        assert rest[-1].choices[0].finish_reason in ("length", "stop")  # finished within the grace period
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_remote_bind_refused_and_demo_announced(env):
    """Also the daemon path of --quant: the demo checkpoint served with int4 weights, shown on the card."""
    out = pixdesk(env, "serve", "--host", "0.0.0.0", "--port", "0")
    assert out.returncode == 2 and "--allow-remote" in out.stderr and "Traceback" not in out.stderr
    cmd = [sys.executable, "-m", "pixdesk", "serve", "--port", "0", "--quant", "int4"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        info = wait_for_discovery(env, proc)
        key = Path(info["api_key_file"]).read_text().strip()
        import urllib.request

        req = urllib.request.Request(info["url"] + "/v1/models", headers={"Authorization": f"Bearer {key}"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        card = json.loads(opener.open(req, timeout=60).read())["data"][0]
        assert card["demo"] is True and "random" in card["notice"]
        assert card["quant"] == "int4" and card["dtype"] == "float32"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    log = proc.stderr.read()
    assert "demo checkpoint" in log and "int4 quantized at load and cached" in log


def test_detach_and_open(env, tiny_dir):
    out = pixdesk(env, "serve", "--detach", "--model", str(tiny_dir), "--port", "0")
    assert out.returncode == 0, out.stderr
    info = wait_for_discovery(env)
    try:
        opened = pixdesk(env, "open", "--no-browser")
        assert opened.returncode == 0, opened.stderr
        url = opened.stderr.strip().split()[-1]
        assert url.startswith(info["url"] + "/#code=") and len(url.split("=", 1)[1]) >= 20
    finally:
        assert pixdesk(env, "stop").returncode == 0


def _non_loopback_address() -> str | None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


def test_default_listener_is_reachable_on_loopback_only(live):
    import socket

    address = _non_loopback_address()
    if address is None:
        skip_or_fail("this machine has no non-loopback IPv4 address to test from")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, live.port), timeout=5).close()
    socket.create_connection(("127.0.0.1", live.port), timeout=5).close()
