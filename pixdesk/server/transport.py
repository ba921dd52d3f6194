"""uvicorn's h11 protocol with our own guards on the request head (SECURITY.md row 10).

h11 caps only an *incomplete* head (h11_max_incomplete_event_size): 64 KiB of headers or 10k header lines
that arrive in one write parse as a complete event and pass. So before h11 sees the bytes, HeadScanner
counts the head's bytes and lines and finds its end; over a limit -> 431 and close. A deadline armed when
the connection opens (and again when a keep-alive connection waits for its next request) closes sockets
whose head does not complete in time (slowloris) with 408. Nothing here touches the ASGI app.
"""

from __future__ import annotations

import asyncio
import re

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from pixdesk.errors import HeadersTooLarge, PixdeskError, RequestTimeout
from pixdesk.server.responses import dumps

_HEAD_END = re.compile(rb"\n\r?\n")


class HeadScanner:
    """Tracks one request head across reads: None while incomplete, the head's end offset in `data` when done.

    >>> s = HeadScanner(max_bytes=100, max_lines=10)
    >>> s.feed(b"GET / HTTP/1.1\\r\\nHost: a\\r\\n"), s.feed(b"\\r\\nBODY")
    (None, 2)
    """

    def __init__(self, max_bytes: int, max_lines: int):
        self.max_bytes, self.max_lines = max_bytes, max_lines
        self.size = 0
        self.lines = 0
        self.tail = b""  # last bytes of the previous read: the end marker may straddle two reads

    def feed(self, data: bytes) -> int | None:
        window = self.tail + data
        m = _HEAD_END.search(window)
        end = m.end() - len(self.tail) if m else len(data)  # > 0: the marker cannot lie inside the old tail
        used = data[:end]
        self.size += len(used)
        self.lines += used.count(b"\n")
        if self.size > self.max_bytes or self.lines > self.max_lines:
            raise HeadersTooLarge(
                f"the request head is over {self.max_bytes} bytes or {self.max_lines} lines "
                "(server.max_header_bytes / server.max_header_lines)"
            )
        self.tail = window[-3:]
        return end if m else None


def guarded_h11(max_bytes: int, max_lines: int, timeout_s: float) -> type[H11Protocol]:
    """The class to pass as uvicorn's `http=`, with these limits on every request head."""
    limits = {"max_head_bytes": max_bytes, "max_head_lines": max_lines, "head_timeout_s": timeout_s}
    return type("GuardedH11Protocol", (GuardedH11Protocol,), limits)


class GuardedH11Protocol(H11Protocol):
    max_head_bytes = 16384
    max_head_lines = 100
    head_timeout_s = 10.0

    def __init__(self, config, server_state, app_state, _loop=None):
        super().__init__(config, server_state, app_state, _loop)
        self.access_log = False  # uvicorn's access line has the query string; RequestLog logs instead
        self.scanner: HeadScanner | None = None
        self.head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._expect_head()

    def connection_lost(self, exc) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.scanner is not None:
            try:
                end = self.scanner.feed(data)
            except PixdeskError as err:
                return self._reject(err)
            if end is not None:
                self.scanner = None
                self._stop_timer()
        super().data_received(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # keep-alive: the next head gets its own byte count and deadline, unless a pipelined request that
        # h11 had already buffered is under way (its head was complete when it arrived)
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._expect_head()

    def _expect_head(self) -> None:
        self.scanner = HeadScanner(self.max_head_bytes, self.max_head_lines)
        self._stop_timer()
        self.head_timer = self.loop.call_later(self.head_timeout_s, self._head_timeout)

    def _stop_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timeout(self) -> None:
        self.head_timer = None
        if self.scanner is None or self.transport.is_closing():
            return
        if self.scanner.size == 0 and self.cycle is not None:
            self.transport.close()  # an idle keep-alive connection: just close it
            return
        self._reject(
            RequestTimeout(
                f"the request head did not arrive within {self.head_timeout_s:g} s (server.header_timeout_s)"
            )
        )

    def _reject(self, err: PixdeskError) -> None:
        """Answer with raw bytes (h11 has no request to respond to yet) and close."""
        self.scanner = None
        self._stop_timer()
        body = dumps(err.to_dict())
        reason = {431: "Request Header Fields Too Large", 408: "Request Timeout"}.get(
            err.http_status, "Error"
        )
        head = (
            f"HTTP/1.1 {err.http_status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()
