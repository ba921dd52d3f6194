"""Where the stdio bridge and the MCP server send their work: the resident daemon, or one run in-process.

Daemon mode: find the daemon through the discovery file; when there is none, start `pixdesk serve` detached
(server/client.py) under a spawn lock in the runtime dir, so two clients started together start one daemon;
then wait until its /health answers. When a request's connection breaks (the daemon died), the bridge
finds or starts a daemon again and resubmits the request from the start; `on_restart` lets the front tell
its client to drop the partial answer.

In-process mode (`--in-process`): the same HTTP app runs on an ephemeral loopback port inside this process
with a fresh random key and no discovery file, so every front still speaks one API.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from pixdesk.config import DTYPES, QUANTS, runtime_dir
from pixdesk.errors import InvalidConfig, ModelUnavailable
from pixdesk.server.rpc_framing import error_from_body
from pixdesk.server.rpc_http import DaemonGone, Response, call_json, checked, open_request

log = logging.getLogger("pixdesk.bridge")
MAX_RESUBMITS = 2
Restart = Callable[[], Awaitable[None]]


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by `pixdesk stdio` and `pixdesk mcp` (spelled as for `serve`)."""
    p.add_argument(
        "--model", metavar="DIR", help="checkpoint directory (for a daemon started by this command)"
    )
    p.add_argument("--dtype", choices=DTYPES, help="compute dtype (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--quant", choices=QUANTS, help="weight quantization (default: none)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--config", metavar="FILE", type=Path, help="config.toml to read instead of the default")
    p.add_argument("--in-process", action="store_true", help="run the engine inside this process")
    p.add_argument("--start-timeout", type=float, default=120.0, metavar="S",
                   help="seconds to wait for a started daemon to answer (default 120)")  # fmt: skip


class Bridge:
    def __init__(self, ns: argparse.Namespace):
        self.ns = ns
        self.in_process = bool(getattr(ns, "in_process", False))
        self.timeout = float(getattr(ns, "start_timeout", 120.0))
        self.url: str | None = None
        self.key: str | None = None
        self.pid: int | None = None
        self.error: str | None = None  # why the last connect failed
        self.restarts = 0
        self.model: dict | None = None
        self._lock = asyncio.Lock()
        self._server = None  # in-process uvicorn server
        self._task: asyncio.Task | None = None

    def serve_args(self) -> list[str]:
        args = []
        for flag in ("model", "dtype", "quant", "device", "config"):
            value = getattr(self.ns, flag, None)
            if value:
                args += [f"--{flag}", str(value)]
        return args

    # ---------------------------------------------------------------------------------------- connect

    def start(self) -> None:
        """Begin connecting in the background (the handshake answers meanwhile)."""
        self._task = asyncio.get_running_loop().create_task(self._connect_quietly())

    async def _connect_quietly(self) -> None:
        try:
            await self.connect()
        except Exception as exc:  # noqa: BLE001 - remembered; the next request retries and reports it
            self.error = getattr(exc, "message", str(exc))

    async def connect(self, dead_url: str | None = None) -> tuple[str, str]:
        async with self._lock:
            if self.url is not None and self.url != dead_url:
                return self.url, self.key
            if dead_url is not None:
                self.restarts += 1
                log.warning("the daemon at %s is gone; starting another and resubmitting", dead_url)
            self.url = self.key = None
            self.model = None
            if self.in_process:
                if dead_url is not None:
                    raise ModelUnavailable("the in-process server stopped; restart this command")
                url, key, pid = await asyncio.to_thread(self._start_in_process)
            else:
                url, key, pid = await asyncio.to_thread(self._find_or_start, dead_url)
            await self._wait_for_health(url)
            self.url, self.key, self.pid, self.error = url, key, pid, None
            return url, key

    def _find_or_start(self, dead_url: str | None) -> tuple[str, str, int]:
        from pixdesk.server.client import DaemonClient, start_detached
        from pixdesk.server.discovery import private_dir

        lock_path = private_dir(runtime_dir()) / "spawn.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            _lock_file(fd, self.timeout)
            deadline = time.monotonic() + self.timeout
            while True:
                client = DaemonClient.find()
                if client is None:
                    client = start_detached(self.serve_args(), timeout=self.timeout)
                # A daemon killed a moment ago still holds its lock until the kernel has torn it down.
                if client.url != dead_url or _answers(client):
                    return client.url, client.key(), client.pid
                if time.monotonic() > deadline:
                    raise InvalidConfig(f"the daemon at {dead_url} stopped answering but did not exit")
                time.sleep(0.05)
        finally:
            os.close(fd)  # drops the lock

    def _start_in_process(self) -> tuple[str, str, int]:
        import uvicorn

        try:  # the CLI is a package (cli/daemon.py, cli/common.py) or, in older trees, one module
            from pixdesk.cli.common import settings_from
            from pixdesk.cli.daemon import make_loader
        except ImportError:
            from pixdesk.cli import make_loader, settings_from
        from pixdesk.server.app import create_app
        from pixdesk.server.daemon import bind, url_for, uvicorn_config
        from pixdesk.server.discovery import new_api_key

        settings = settings_from(self.ns)
        key = new_api_key()
        sock = bind("127.0.0.1", 0)
        app = create_app(make_loader(settings), settings, key)
        server = uvicorn.Server(uvicorn_config(app, settings))
        threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="pixdesk-http", daemon=True
        ).start()
        deadline = time.monotonic() + self.timeout
        while not server.started:
            if time.monotonic() > deadline:
                raise InvalidConfig("the in-process server did not start")
            time.sleep(0.02)
        self._server = server
        return url_for("127.0.0.1", sock.getsockname()[1]), key, os.getpid()

    async def _wait_for_health(self, url: str) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                status, body = await call_json(url, "GET", "/health", timeout=2.0)
                if status in (200, 503) and isinstance(body, dict) and "status" in body:
                    return
            except DaemonGone:
                pass
            if time.monotonic() > deadline:
                raise InvalidConfig(
                    f"the daemon at {url} did not answer /health within {self.timeout:g} s "
                    "(--start-timeout); see its log (pixdesk status, user log dir daemon.log)"
                )
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True

    # ---------------------------------------------------------------------------------------- state

    async def status(self) -> dict:
        """For handshakes: answers at once. state = starting | loading | ready | failed (+ model card)."""
        out: dict = {"state": "starting", "mode": "in-process" if self.in_process else "daemon"}
        if self.url is None:
            if self.error:
                out.update(state="failed", error=self.error)
            return out
        out["daemon"] = {"url": self.url, "pid": self.pid, "restarts": self.restarts}
        try:
            _, health = await call_json(self.url, "GET", "/health", timeout=1.0)
            out["state"] = health.get("status", "starting")
            for key in ("progress", "phase"):
                if key in health:
                    out[key] = health[key]
            if out["state"] == "ready" and self.model is None:
                status, models = await call_json(self.url, "GET", "/v1/models", key=self.key, timeout=2.0)
                if status == 200 and models.get("data"):
                    self.model = models["data"][0]
        except (DaemonGone, AttributeError):
            out["state"] = "starting"
        out["model"] = self.model
        return out

    # ---------------------------------------------------------------------------------------- requests

    async def get(self, path: str) -> object:
        for _ in range(MAX_RESUBMITS + 1):
            url, key = await self.connect()
            try:
                resp = await checked(await open_request(url, "GET", path, key=key, timeout=self.timeout))
                try:
                    return await resp.json()
                finally:
                    resp.close()
            except DaemonGone:
                await self.connect(dead_url=url)
        raise ModelUnavailable("the daemon keeps going away; see its log")

    async def post(self, path: str, body: dict, on_restart: Restart | None = None) -> object:
        """A non-streamed answer (the whole JSON body)."""
        return await self.exchange(path, body, lambda resp: resp.json(), on_restart)

    async def stream(self, path: str, body: dict, on_chunk: Callable[[dict], Awaitable[None]],
                     on_restart: Restart | None = None) -> None:  # fmt: skip
        """Feed each chunk of a `"stream": true` request to on_chunk; an {"error": ...} chunk raises."""

        async def consume(resp: Response) -> None:
            async for event in resp.events():
                if event == "[DONE]":
                    return
                if isinstance(event, dict) and "error" in event:
                    raise error_from_body(event, 200)
                await on_chunk(event)
            raise DaemonGone("the stream ended without [DONE]")

        await self.exchange(path, {**body, "stream": True}, consume, on_restart)

    async def exchange(self, path: str, body: dict, consume: Callable[[Response], Awaitable[object]],
                       on_restart: Restart | None = None) -> object:  # fmt: skip
        """POST and consume the answer; when the daemon goes away meanwhile, reconnect and resubmit."""
        for attempt in range(MAX_RESUBMITS + 1):
            url, key = await self.connect()
            if attempt and on_restart is not None:
                await on_restart()
            resp = None
            try:
                resp = await checked(
                    await open_request(url, "POST", path, body, key=key, timeout=self.timeout)
                )
                return await consume(resp)
            except DaemonGone as exc:
                log.warning("request to %s broke: %s", path, exc)
                await self.connect(dead_url=url)
            finally:
                if resp is not None:
                    resp.close()
        raise ModelUnavailable(f"the daemon went away {MAX_RESUBMITS + 1} times during this request")


def _answers(client) -> bool:
    try:
        status, _ = client.call("GET", "/health", auth=False, timeout=1.0)
    except InvalidConfig:
        return False
    return status in (200, 503)


def _lock_file(fd: int, timeout: float) -> None:
    if os.name != "posix":  # pragma: no cover - Windows: the daemon's own lock still keeps one instance
        return
    import fcntl

    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise InvalidConfig(
                    "another pixdesk client is still starting the daemon; try again"
                ) from None
            time.sleep(0.05)
