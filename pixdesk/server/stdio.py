"""`pixdesk stdio`: JSON-RPC 2.0 over stdin/stdout for editors and scripts; a thin bridge to the daemon.

Methods (docs/stdio.md has every shape): initialize, chat, task, screenshot, models, cancel, shutdown, exit;
notifications in: $/cancelRequest, exit; notifications out: stream/delta, stream/restart (each carries the
request id). Requests run concurrently; images named by path or capture source are read here and sent on
as data: URIs. stdout carries frames only; logs go to stderr; EOF cancels what is in flight and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from pixdesk import __version__
from pixdesk.errors import Cancelled, InvalidRequest, PixdeskError, ShuttingDown
from pixdesk.server.rpc_daemon import Bridge, add_engine_arguments
from pixdesk.server.rpc_framing import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    BadFrame,
    FrameReader,
    FrameWriter,
    RpcError,
    error_response,
    notification,
    parse_message,
    read_stdin_chunks,
    response,
    serve_frames,
)
from pixdesk.server.rpc_images import SOURCES, ImageResolver

log = logging.getLogger("pixdesk.stdio")
PROTOCOL = "pixdesk-stdio/1"
METHODS = ("initialize", "chat", "task", "screenshot", "models", "cancel", "shutdown", "exit")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_engine_arguments(p)
    p.add_argument(
        "--allow-path",
        action="append",
        default=None,
        metavar="DIR",
        help="read image files only inside DIR (repeatable; default: any file you can read)",
    )


class StdioServer:
    def __init__(self, ns: argparse.Namespace, writer: FrameWriter, bridge: Bridge, images: ImageResolver):
        self.ns, self.writer, self.bridge, self.images = ns, writer, bridge, images
        self.inflight: dict[tuple, asyncio.Task] = {}
        self.shutting_down = False
        self.exiting = False
        self.quiet = False  # after EOF nobody reads: cancelled requests are not answered

    async def serve(self) -> int:
        chunks: asyncio.Queue[bytes] = asyncio.Queue()
        read_stdin_chunks(asyncio.get_running_loop(), chunks)
        reader = FrameReader()
        self.bridge.start()
        while not self.exiting:
            chunk = await chunks.get()
            for frame in reader.feed(chunk) if chunk else reader.eof():
                self.on_frame(frame)
            if not chunk:
                break
        if self.shutting_down and not self.exiting:  # `shutdown` then EOF: finish what was asked
            while self.inflight:
                await asyncio.wait(list(self.inflight.values()))
        self.quiet = True  # EOF without `shutdown`: nobody reads the answers; cancel them (row 26)
        await self.cancel_all()
        self.bridge.stop()
        return 0

    async def cancel_all(self) -> None:
        tasks = list(self.inflight.values())
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    # ------------------------------------------------------------------------------------ dispatch

    def on_frame(self, frame: bytes | BadFrame) -> None:
        if isinstance(frame, BadFrame):
            self.writer.send(error_response(None, RpcError(frame.code, frame.message)))
            return
        try:
            msg = parse_message(frame)
        except RpcError as exc:
            self.writer.send(error_response(None, exc))
            return
        method, params = msg["method"], msg.get("params", {})
        if "id" not in msg:
            self.on_notification(method, params)
            return
        rid = msg["id"]
        key = (type(rid).__name__, rid)
        if method not in METHODS:
            self.writer.send(
                error_response(rid, RpcError(METHOD_NOT_FOUND, f"method not found: {method[:80]}"))
            )
        elif key in self.inflight:
            self.writer.send(
                error_response(rid, RpcError(INVALID_REQUEST, f"id {rid!r} is already in flight"))
            )
        elif not isinstance(params, dict):
            self.writer.send(error_response(rid, RpcError(INVALID_PARAMS, "params must be an object")))
        elif self.shutting_down and method not in ("exit", "cancel", "initialize"):
            self.writer.send(
                error_response(rid, ShuttingDown("the server is shutting down (shutdown was called)"))
            )
        else:
            self.shutting_down = self.shutting_down or method == "shutdown"  # at once: EOF may follow
            self.inflight[key] = asyncio.get_running_loop().create_task(
                self.run_request(key, rid, method, params)
            )

    def on_notification(self, method: str, params) -> None:
        if method in ("$/cancelRequest", "cancel") and isinstance(params, dict):
            self.cancel(params.get("id"))
        elif method == "exit":
            self.exiting = True
        # anything else (initialized, $/setTrace, unknown ones): notifications get no answer

    def cancel(self, rid) -> bool:
        task = self.inflight.get((type(rid).__name__, rid))
        if task is None or task.done():
            return False
        task.cancel()
        return True

    async def run_request(self, key: tuple, rid, method: str, params: dict) -> None:
        try:
            result = await getattr(self, "m_" + method)(rid, params)
            self.writer.send(response(rid, result))
        except asyncio.CancelledError:
            if not self.quiet:
                self.writer.send(error_response(rid, Cancelled(f"request {rid!r} was cancelled")))
        except (PixdeskError, RpcError) as exc:
            self.writer.send(error_response(rid, exc))
        except Exception:  # noqa: BLE001 - the process keeps serving; the log has the stack
            log.exception("internal error in %s", method)
            self.writer.send(error_response(rid, PixdeskError("internal error; see the log on stderr")))
        finally:
            self.inflight.pop(key, None)

    # ------------------------------------------------------------------------------------ methods

    async def m_initialize(self, rid, params: dict) -> dict:
        status = await self.bridge.status()
        return {
            "protocolVersion": PROTOCOL,
            "serverInfo": {"name": "pixdesk", "version": __version__},
            "capabilities": {
                "methods": list(METHODS),
                "notifications": ["stream/delta", "stream/restart"],
                "cancel": ["cancel", "$/cancelRequest"],
                "imageSources": ["data", "path", "file", "http", *SOURCES],
                "framing": ["ndjson", "content-length"],
                "tasks": ["ask", "html", "chart", "receipt"],
            },
            **status,
        }

    async def m_models(self, rid, params: dict) -> object:
        return await self.bridge.get("/v1/models")

    async def m_cancel(self, rid, params: dict) -> dict:
        if "id" not in params:
            raise InvalidRequest("cancel needs the id of the request to cancel", param="id")
        return {"cancelled": self.cancel(params["id"])}

    async def m_shutdown(self, rid, params: dict) -> None:
        others = [t for t in self.inflight.values() if t is not asyncio.current_task()]
        if others:
            await asyncio.wait(others)
        return None

    async def m_exit(self, rid, params: dict) -> None:
        self.exiting = True
        return None

    async def m_screenshot(self, rid, params: dict) -> dict:
        unknown = set(params) - {"source", "region", "monitor"}
        if unknown:
            raise InvalidRequest(f"unknown field {sorted(unknown)[0]!r}", param=sorted(unknown)[0])
        source = params.get("source", "screen")
        uri = await self.images.capture(source, params.get("region"), params.get("monitor"), "params")
        return {"image": uri, "mime": uri[5 : uri.index(";")], "source": source}

    async def m_chat(self, rid, params: dict) -> dict:
        body = dict(params)
        stream = _flag(body.pop("stream", False), "stream")
        body["messages"] = await self.resolve_messages(body.get("messages"))
        if not stream:
            return await self.bridge.post("/v1/chat/completions", body)
        acc = _Assembled()

        async def on_chunk(chunk: dict) -> None:
            delta = acc.add_chat(chunk)
            if delta:
                self.writer.send(notification("stream/delta", {"id": rid, "delta": delta}))

        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        await self.bridge.stream("/v1/chat/completions", body, on_chunk, self._restart(rid, acc))
        return acc.chat_result()

    async def m_task(self, rid, params: dict) -> dict:
        unknown = set(params) - {"name", "images", "options", "stream", "model"}
        if unknown:
            raise InvalidRequest(f"unknown field {sorted(unknown)[0]!r}", param=sorted(unknown)[0])
        name = params.get("name")
        if not isinstance(name, str) or not name.isidentifier():
            raise InvalidRequest("name must be a task name (ask, html, chart, receipt)", param="name")
        images = params.get("images")
        if not isinstance(images, list) or not images:
            raise InvalidRequest("images must be a non-empty array", param="images")
        body = {k: v for k, v in params.items() if k in ("options", "model")}
        body["images"] = [await self.images.resolve(spec, f"images[{i}]") for i, spec in enumerate(images)]
        path = f"/v1/tasks/{name}"
        if not _flag(params.get("stream", False), "stream"):
            return await self.bridge.post(path, body)
        acc = _Assembled()

        async def on_chunk(chunk: dict) -> None:
            if chunk.get("object") == "task.result":
                acc.final = chunk
            elif chunk.get("delta"):
                self.writer.send(
                    notification("stream/delta", {"id": rid, "delta": {"content": chunk["delta"]}})
                )

        await self.bridge.stream(path, body, on_chunk, self._restart(rid, acc))
        return acc.final

    def _restart(self, rid, acc: _Assembled):
        async def on_restart() -> None:
            acc.reset()
            self.writer.send(notification("stream/restart", {"id": rid, "reason": "the daemon restarted"}))

        return on_restart

    async def resolve_messages(self, messages) -> list:
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("messages must be a non-empty array", param="messages")
        out = []
        for i, m in enumerate(messages):
            if isinstance(m, dict) and isinstance(m.get("content"), list):
                parts = [
                    await self._part(p, f"messages[{i}].content[{j}]") for j, p in enumerate(m["content"])
                ]
                m = {**m, "content": parts}
            out.append(m)
        return out

    async def _part(self, part, where: str):
        if not isinstance(part, dict) or part.get("type") not in ("image_url", "image"):
            return part
        if part["type"] == "image":
            spec = {k: v for k, v in part.items() if k != "type"}
            return {"type": "image_url", "image_url": {"url": await self.images.resolve(spec, where)}}
        spec = part.get("image_url")
        if isinstance(spec, dict):
            url = await self.images.resolve(spec.get("url"), f"{where}.image_url.url")
            return {**part, "image_url": {**spec, "url": url}}
        return {**part, "image_url": await self.images.resolve(spec, f"{where}.image_url")}


class _Assembled:
    """A streamed chat answer put back together: the text, tool calls, finish reason and usage."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.head: dict = {}
        self.text: list[str] = []
        self.tool_calls: list = []
        self.finish = None
        self.usage = None
        self.final = None

    def add_chat(self, chunk: dict) -> dict | None:
        self.head = self.head or {k: chunk.get(k) for k in ("id", "created", "model", "system_fingerprint")}
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        choices = chunk.get("choices") or []
        if not choices:
            return None
        choice = choices[0]
        delta = choice.get("delta") or {}
        self.finish = choice.get("finish_reason") or self.finish
        self.text.append(delta.get("content") or "")
        self.tool_calls += delta.get("tool_calls") or []
        useful = {k: v for k, v in delta.items() if k in ("content", "tool_calls") and v}
        return useful or None

    def chat_result(self) -> dict:
        message = {"role": "assistant", "content": "".join(self.text) if not self.tool_calls else None}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        choice = {"index": 0, "message": message, "finish_reason": self.finish}
        return {**self.head, "object": "chat.completion", "choices": [choice], "usage": self.usage}


def _flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"{name} must be true or false", param=name)
    return value


def image_limits(ns: argparse.Namespace):
    from pixdesk.config import load_settings

    return load_settings(getattr(ns, "config", None)).images


def run(ns: argparse.Namespace) -> int:
    """Serve until EOF or `exit`. The frame channel is claimed first, so nothing else can reach stdout."""

    def start(writer: FrameWriter):
        limits = image_limits(ns)
        roots = [str(r) for r in ns.allow_path] if ns.allow_path else None

        async def allowed() -> list[str] | None:
            return roots

        images = ImageResolver(max_bytes=limits.max_bytes, max_pixels=limits.max_pixels, roots=allowed)
        return StdioServer(ns, writer, Bridge(ns), images).serve()

    return serve_frames("pixdesk stdio", start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pixdesk stdio", description="JSON-RPC 2.0 over stdin/stdout")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
