"""JSON-RPC 2.0 over stdio: frames in (NDJSON or Content-Length), frames out (NDJSON), message checks.

Input framing, decided per frame by its first bytes:
    {"jsonrpc": "2.0", ...}\\n                      one UTF-8 JSON value per line (NDJSON)
    Content-Length: 42\\r\\n\\r\\n{"jsonrpc": ...}       LSP-style header block, then exactly N bytes
A frame over `max_bytes` (64 MiB) is skipped up to its end and reported once, so one huge line costs
memory for at most `max_bytes` and the next frame is read normally (SECURITY row 29).

Output: one compact JSON object per line on the process's real stdout. `claim_stdout` moves fd 1 and
`sys.stdout` onto stderr first, so a library that prints (or a child process that inherits fd 1) can
never put a stray byte between frames.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pixdesk.errors import KINDS, PixdeskError

MAX_FRAME_BYTES = 64 * 1024 * 1024
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602


@dataclass(frozen=True)
class BadFrame:
    """A frame that could not become a message: answered with `code` (and id null), then skipped."""

    code: int
    message: str


class RpcError(Exception):
    """A JSON-RPC error that is not a row of the pixdesk table (parse, request shape, unknown method)."""

    def __init__(self, code: int, message: str, data: dict | None = None):
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


def error_object(exc: BaseException) -> dict:
    """The `error` member for an exception: pixdesk errors keep their table code and a stable data.code."""
    if isinstance(exc, RpcError):
        out = {"code": exc.code, "message": exc.message}
        if exc.data is not None:
            out["data"] = exc.data
        return out
    if not isinstance(exc, PixdeskError):
        exc = PixdeskError("internal error; see the log on stderr")
    return {"code": exc.jsonrpc_code, "message": exc.message, "data": {"code": exc.code, "param": exc.param}}


def error_from_body(body: object, status: int) -> PixdeskError:
    """An OpenAI-shaped {"error": {...}} body (HTTP or a stream chunk) -> the same PixdeskError."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return PixdeskError(f"the daemon answered HTTP {status} without an error body")
    code = err.get("code") if err.get("code") in KINDS else "internal_error"
    return PixdeskError(str(err.get("message") or code), param=err.get("param"), code=code)


# ------------------------------------------------------------------------------------------------ input


class FrameReader:
    """Splits a byte stream into frames. Feed chunks with `feed`, take frames (bytes | BadFrame) out."""

    def __init__(self, max_bytes: int = MAX_FRAME_BYTES):
        self.max_bytes = max_bytes
        self.buf = bytearray()
        self.skipping = False  # inside an over-long NDJSON line: drop bytes up to its newline
        self.body_left = 0  # inside an over-long Content-Length body: drop this many bytes

    def feed(self, chunk: bytes) -> list[bytes | BadFrame]:
        self.buf += chunk
        out: list[bytes | BadFrame] = []
        while True:
            frame = self._next()
            if frame is None:
                return out
            out.append(frame)

    def _next(self) -> bytes | BadFrame | None:
        if self.body_left:
            n = min(self.body_left, len(self.buf))
            del self.buf[:n]
            self.body_left -= n
            return None
        if self.skipping:
            nl = self.buf.find(b"\n")
            if nl < 0:
                self.buf.clear()
                return None
            del self.buf[: nl + 1]
            self.skipping = False
        i = 0
        while i < len(self.buf) and self.buf[i] in b" \t\r\n":
            i += 1
        del self.buf[:i]
        head = bytes(self.buf[:15]).lower()
        if head == b"content-length:":
            return self._headed()
        if head and len(head) < 15 and b"content-length:".startswith(head) and b"\n" not in self.buf:
            return None  # maybe the start of a header: wait for more bytes
        nl = self.buf.find(b"\n")
        if nl < 0:
            if len(self.buf) > self.max_bytes:
                self.buf.clear()
                self.skipping = True
                return self._too_long()
            return None
        if nl > self.max_bytes:
            del self.buf[: nl + 1]
            return self._too_long()
        line = bytes(self.buf[:nl])
        del self.buf[: nl + 1]
        return line

    def _headed(self) -> bytes | BadFrame | None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > 8192:
                self.buf.clear()
                self.skipping = True
                return BadFrame(PARSE_ERROR, "a Content-Length header block is longer than 8 KiB")
            return None
        head = bytes(self.buf[:end]).decode("latin-1")
        length = None
        for line in head.split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length" and value.strip().isdigit():
                length = int(value.strip())
        if length is None:
            del self.buf[: end + 4]
            return BadFrame(PARSE_ERROR, "a header block without a valid Content-Length")
        if length > self.max_bytes:
            del self.buf[: end + 4]
            self.body_left = length
            return self._too_long()
        if len(self.buf) < end + 4 + length:
            return None
        body = bytes(self.buf[end + 4 : end + 4 + length])
        del self.buf[: end + 4 + length]
        return body

    def _too_long(self) -> BadFrame:
        return BadFrame(INVALID_REQUEST, f"a frame is longer than {self.max_bytes} bytes; it was skipped")

    def eof(self) -> list[bytes | BadFrame]:
        """Frames left at end of input: a last line without its newline still counts."""
        if self.skipping or self.body_left or not self.buf.strip():
            return []
        if bytes(self.buf[:15]).lower() == b"content-length:":
            self.buf.clear()
            return [BadFrame(PARSE_ERROR, "input ended inside a Content-Length frame")]
        line = bytes(self.buf)
        self.buf.clear()
        return [line]


def parse_message(raw: bytes, *, responses: bool = False) -> dict:
    """One frame -> a request or notification dict (or, with responses=True, a response to one of ours);
    RpcError for parse errors and invalid requests."""
    try:
        msg = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RpcError(PARSE_ERROR, f"parse error: not UTF-8 JSON ({str(exc)[:80]})") from None
    if isinstance(msg, list):
        raise RpcError(INVALID_REQUEST, "batches are not supported; send one request per frame")
    if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, 'invalid request: expected an object with "jsonrpc": "2.0"')
    rid = msg.get("id")
    if "id" in msg and (isinstance(rid, bool) or not isinstance(rid, (str, int, type(None)))):
        raise RpcError(INVALID_REQUEST, "invalid request: id must be a string, an integer or null")
    if not isinstance(msg.get("method"), str):
        if ("result" in msg or "error" in msg) and "id" in msg and responses:
            return msg
        if "result" in msg or "error" in msg:  # a response: we send no requests, so nothing awaits it
            raise RpcError(INVALID_REQUEST, "invalid request: unexpected response (this server sends none)")
        raise RpcError(INVALID_REQUEST, "invalid request: method must be a string")
    if "params" in msg and not isinstance(msg["params"], (dict, list)):
        raise RpcError(INVALID_REQUEST, "invalid request: params must be an object or an array")
    return msg


def read_stdin_chunks(loop: asyncio.AbstractEventLoop, q: asyncio.Queue, fd: int = 0) -> threading.Thread:
    """A daemon thread that reads fd and puts chunks (b"" at EOF) on q: works for pipes, files and ttys."""

    def pump() -> None:
        while True:
            try:
                chunk = os.read(fd, 1 << 20)
            except OSError:
                chunk = b""
            loop.call_soon_threadsafe(q.put_nowait, chunk)
            if not chunk:
                return

    t = threading.Thread(target=pump, name="pixdesk-stdin", daemon=True)
    t.start()
    return t


# ------------------------------------------------------------------------------------------------ output


def claim_stdout() -> int:
    """Keep a private copy of fd 1 for frames; point fd 1 and sys.stdout at stderr. Returns the frame fd."""
    sys.stdout.flush()
    frame_fd = os.dup(1)  # non-inheritable: children never see the protocol channel
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return frame_fd


class FrameWriter:
    """Writes one JSON object per line to `fd` from a thread, so a slow reader never blocks the loop."""

    def __init__(self, fd: int):
        self.fd = fd
        self.q: queue.Queue[bytes | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="pixdesk-stdout", daemon=True)
        self.thread.start()
        self.broken = False

    def send(self, obj: dict) -> None:
        self.q.put(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")

    def send_raw(self, line: bytes) -> None:
        self.q.put(line if line.endswith(b"\n") else line + b"\n")

    def _run(self) -> None:
        while (data := self.q.get()) is not None:
            view = memoryview(data)
            while view and not self.broken:
                try:
                    view = view[os.write(self.fd, view) :]
                except OSError:  # the client closed our stdout: keep draining, write nothing
                    self.broken = True

    def close(self, timeout: float = 10.0) -> None:
        self.q.put(None)
        self.thread.join(timeout)


def response(rid, result) -> dict:
    return {"jsonrpc": "2.0", "id": rid, "result": result}


def error_response(rid, exc: BaseException) -> dict:
    return {"jsonrpc": "2.0", "id": rid, "error": error_object(exc)}


def notification(method: str, params: dict) -> dict:
    return {"jsonrpc": "2.0", "method": method, "params": params}


def serve_frames(name: str, start: Callable[[FrameWriter], Awaitable[int]]) -> int:
    """Run a stdio front: claim stdout for frames, log to stderr, await `start(writer)`.

    A PixdeskError while starting (bad settings, no daemon) is logged and ends with exit status 2.
    """
    frame_fd = claim_stdout()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")  # fmt: skip
    writer = FrameWriter(frame_fd)
    try:
        return asyncio.run(start(writer))
    except PixdeskError as exc:
        logging.getLogger("pixdesk.rpc").error("%s: %s", name, exc.message)
        return 2
    finally:
        writer.close()
