"""A small asyncio HTTP/1.1 client for the loopback daemon: JSON requests and SSE streams.

One connection per request (`Connection: close`), so cancelling the task that reads a response closes its
socket, and the daemon cancels the generation within about one decode step (SECURITY row 26). No proxies,
no redirects, no TLS: the URL comes from the daemon's own discovery file.

A connection that is refused, reset or closed before the response is complete raises `DaemonGone`;
the bridge then restarts the daemon and resubmits (rpc_daemon.py). HTTP errors become the PixdeskError
the daemon named in its body.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from pixdesk.server.rpc_framing import error_from_body

MAX_BODY = 256 * 1024 * 1024


class DaemonGone(Exception):
    """The daemon did not answer, or its connection broke mid-response."""


class Response:
    def __init__(self, status: int, headers: dict[str, str], reader: asyncio.StreamReader, writer):
        self.status, self.headers, self.reader, self.writer = status, headers, reader, writer
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self.length = int(headers["content-length"]) if "content-length" in headers else None

    async def body(self) -> bytes:
        parts = [p async for p in self.pieces()]
        return b"".join(parts)

    async def json(self):
        raw = await self.body()
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            raise DaemonGone(f"the daemon sent a body that is not JSON (HTTP {self.status})") from None

    async def pieces(self) -> AsyncIterator[bytes]:
        """The body as it arrives, de-chunked; DaemonGone if it ends early."""
        try:
            if self.chunked:
                while True:
                    size_line = await self.reader.readuntil(b"\r\n")
                    size = int(size_line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        return
                    data = await self.reader.readexactly(size + 2)
                    yield data[:-2]
            elif self.length is not None:
                if self.length > MAX_BODY:
                    raise DaemonGone("the daemon's answer is too large")
                yield await self.reader.readexactly(self.length)
            else:
                while chunk := await self.reader.read(1 << 16):
                    yield chunk
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError) as exc:
            raise DaemonGone(f"the daemon's connection broke mid-answer ({type(exc).__name__})") from None

    async def events(self) -> AsyncIterator[dict | str]:
        """SSE `data:` payloads: parsed JSON objects, or the string "[DONE]"."""
        buf = b""
        async for piece in self.pieces():
            buf += piece
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                data = b"\n".join(ln[5:].lstrip() for ln in block.split(b"\n") if ln.startswith(b"data:"))
                if not data:
                    continue
                if data == b"[DONE]":
                    yield "[DONE]"
                    continue
                try:
                    yield json.loads(data)
                except ValueError:
                    raise DaemonGone("the daemon sent an event that is not JSON") from None

    def close(self) -> None:
        self.writer.close()


async def open_request(url: str, method: str, path: str, body: dict | None = None, *,
                       key: str | None = None, timeout: float = 10.0) -> Response:  # fmt: skip
    """Send the request and read the status line and headers (within `timeout`)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    payload = json.dumps(body, separators=(",", ":")).encode() if body is not None else b""
    head = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close", "Accept: */*"]
    if key:
        head.append(f"Authorization: Bearer {key}")
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=1 << 20), timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        raise DaemonGone(f"cannot connect to the daemon at {url} ({exc.__class__.__name__})") from None
    try:
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
        await writer.drain()
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout if body is None else None)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError) as exc:
        writer.close()
        raise DaemonGone(f"the daemon at {url} closed the connection ({exc.__class__.__name__})") from None
    except BaseException:
        writer.close()
        raise
    lines = raw.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        writer.close()
        raise DaemonGone(f"the daemon at {url} answered something that is not HTTP") from None
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    return Response(status, headers, reader, writer)


async def call_json(url: str, method: str, path: str, body: dict | None = None, *, key: str | None = None,
                    timeout: float = 10.0) -> tuple[int, object]:  # fmt: skip
    resp = await open_request(url, method, path, body, key=key, timeout=timeout)
    try:
        return resp.status, await resp.json()
    finally:
        resp.close()


async def checked(resp: Response) -> Response:
    """The response if 200; else its error body raised as the PixdeskError it names."""
    if resp.status == 200:
        return resp
    try:
        body = await resp.json()
    finally:
        resp.close()
    raise error_from_body(body, resp.status)
