"""A real uvicorn server on loopback (the production protocol class and middleware) around the tiny model.

`server` is shared by the module's tests; tests that count engine work compare before/after snapshots.
The fetcher resolves names through FakeNet (a stub resolver and opener), so URL tests never leave the host.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field, replace

import pytest
import uvicorn
from PIL import Image

from pixdesk.config import Settings
from pixdesk.engine.backend import LocalEngine
from pixdesk.engine.scheduler_config import SchedulerConfig
from pixdesk.server.app import create_app
from pixdesk.server.daemon import uvicorn_config
from pixdesk.server.fetch import Fetcher
from pixdesk.weights.checkpoint import load_checkpoint

API_KEY = "pxd-test-key-0123456789abcdef"
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> None:
    """A test that cannot find what it needs skips on a dev machine and fails under CI=true."""
    if CI:
        pytest.fail(f"CI=true: {reason}")
    pytest.skip(reason)


COUNTERS = ("submitted", "prefill_chunks", "vision_calls")


def make_settings(**sections) -> Settings:
    base = Settings()
    images = replace(base.images, max_bytes=256 * 1024, max_pixels=4_000_000, fetch_timeout_s=2.0)
    server = replace(
        base.server,
        header_timeout_s=1.5,
        body_timeout_s=1.5,
        load_wait_s=5.0,
        default_max_tokens=16,
        shutdown_grace_s=2.0,
    )
    s = replace(base, images=images, server=server)
    for name, values in sections.items():
        s = replace(s, **{name: replace(getattr(s, name), **values)})
    return s


def png(w=40, h=30, color=(200, 30, 30), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format=fmt)
    return buf.getvalue()


def data_uri(data: bytes, mime="image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@dataclass
class FakeNet:
    """Stub DNS + dialer: names map to IP lists; a dial to any IP lands on a local port chosen per host."""

    dns: dict[str, list[list[str]]] = field(default_factory=dict)  # host -> successive answers
    routes: dict[str, int] = field(default_factory=dict)  # host -> local port that serves it
    dials: list[tuple[str, int, str]] = field(default_factory=list)  # (ip, port, host)
    lookups: list[str] = field(default_factory=list)

    async def resolve(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        answers = self.dns.get(host)
        if not answers:
            raise OSError("no such host")
        return answers.pop(0) if len(answers) > 1 else answers[0]

    async def open(self, ip: str, port: int, *, tls: bool, server_hostname: str):
        import asyncio

        self.dials.append((ip, port, server_hostname))
        local = self.routes.get(server_hostname)
        if local is None:  # not a stub host: really dial what the fetcher asked for (canary tests see it)
            return await asyncio.open_connection(ip, port)
        return await asyncio.open_connection("127.0.0.1", local)


class ServerThread:
    def __init__(self, app, settings: Settings):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn_config(app, settings))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


@dataclass
class Live:
    port: int
    engine: LocalEngine
    app: object
    net: FakeNet
    key: str = API_KEY

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def counters(self) -> dict:
        s = self.engine.stats()
        return {k: s[k] for k in COUNTERS}

    def request(
        self, method, path, body=None, *, headers=None, key=True, raw: bytes | None = None, timeout=30
    ):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        h = {"Host": f"127.0.0.1:{self.port}"}
        if body is not None or raw is not None:
            h["Content-Type"] = "application/json"
        if key:
            h["Authorization"] = f"Bearer {self.key}"
        h.update(headers or {})
        h = {k: v for k, v in h.items() if v is not None}
        payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        conn.request(method, path, body=payload, headers=h)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = data
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, parsed

    def chat(self, content="Hello", **fields):
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 4,
            "temperature": 0,
            **fields,
        }
        return self.request("POST", "/v1/chat/completions", body)

    def assert_ok_after(self) -> None:
        status, _, body = self.chat()
        assert status == 200, body
        assert body["choices"][0]["finish_reason"] in ("stop", "length")


def make_engine(tiny_dir, **config) -> LocalEngine:
    cfg = {"max_batch": 8, "max_context": 512, "max_queue": 64, "per_client_active": 64, **config}
    return LocalEngine(
        load_checkpoint(tiny_dir), SchedulerConfig(**cfg), images=make_settings().images
    ).start()


@pytest.fixture(scope="module")
def net():
    return FakeNet()


@pytest.fixture(scope="module")
def live(tiny_dir, net):
    settings = make_settings()
    engine = make_engine(tiny_dir)
    fetcher = Fetcher(
        enabled=True,
        max_bytes=settings.images.max_bytes,
        timeout_s=settings.images.fetch_timeout_s,
        resolver=net.resolve,
        opener=net.open,
    )
    app = create_app(engine, settings, API_KEY, fetcher=fetcher)
    with ServerThread(app, settings) as srv:
        yield Live(srv.port, engine, app, net)
    engine.stop()


def raw_exchange(port: int, data: bytes | list[bytes], *, timeout: float = 5.0, pause: float = 0.0) -> bytes:
    """Send bytes (a list is sent piece by piece) and read until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        for piece in data if isinstance(data, list) else [data]:
            try:
                s.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
            if pause:
                time.sleep(pause)
        return read_until_closed(s, timeout)


def read_until_closed(s: socket.socket, timeout: float) -> bytes:
    out = b""
    s.settimeout(timeout)
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def parse_response(raw: bytes) -> tuple[int, dict, dict | None]:
    """(status, headers, JSON body or None) of the first response in raw bytes."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    try:
        return status, headers, json.loads(body)
    except ValueError:
        return status, headers, None


def sse_events(live, body: dict, *, timeout: float = 60) -> tuple[int, list]:
    """POST a streaming request; returns (status, [parsed chunk | "[DONE]"])."""
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=timeout)
    conn.request(
        "POST",
        "/v1/chat/completions",
        json.dumps({**body, "stream": True}),
        {
            "Host": f"127.0.0.1:{live.port}",
            "Authorization": f"Bearer {live.key}",
            "Content-Type": "application/json",
        },
    )
    resp = conn.getresponse()
    events = []
    for line in resp.read().decode().split("\n\n"):
        if line.startswith("data: "):
            payload = line[6:]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    conn.close()
    return resp.status, events
