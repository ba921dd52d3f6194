"""SECURITY.md rows 9-10 on raw sockets: body caps, lying Content-Length, header floods, slowloris.

What h11 + uvicorn do alone (checked here against the pinned versions): a 64 KiB head or 10k header lines
in ONE write parse as a complete event and pass; in pieces h11's incomplete-event cap answers 400. Our
HeadScanner answers 431 in both cases, and the header deadline closes slow heads with 408.
"""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest

from pixdesk.config import max_body_bytes
from tests.server.conftest import make_settings, parse_response, raw_exchange, read_until_closed


def head(live, path="/v1/chat/completions", extra=b"", method=b"POST") -> bytes:
    return (
        method + b" " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1:" + str(live.port).encode() + b"\r\n"
        b"Authorization: Bearer " + live.key.encode() + b"\r\nContent-Type: application/json\r\n" + extra
    )


def statuses_in(raw: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


def check_closed_with(live, raw: bytes, status: int, code: str) -> None:
    got, _, body = parse_response(raw)
    assert (got, body and body["error"]["code"]) == (status, code), raw[:300]


# ------------------------------------------------------------------------------------------ row 10: heads


@pytest.mark.parametrize("pieces", [1, 64])
@pytest.mark.parametrize("flood", ["bytes", "lines"])
def test_header_floods_get_431_and_close(live, pieces, flood):
    before = live.counters()
    if flood == "bytes":
        headers = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(64))  # 64 KiB
    else:
        headers = b"".join(b"X%d: y\r\n" % i for i in range(10_000))  # 10k lines
    data = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % live.port + headers + b"\r\n"
    step = -(-len(data) // pieces)
    raw = raw_exchange(live.port, [data[i : i + step] for i in range(0, len(data), step)])
    check_closed_with(live, raw, 431, "headers_too_large")
    assert live.counters() == before
    live.assert_ok_after()


def test_normal_heads_near_the_limit_pass(live):
    headers = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 100) for i in range(60))  # ~7 KiB, 60 lines
    raw = raw_exchange(
        live.port,
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % live.port
        + headers
        + b"Connection: close\r\n\r\n",
    )
    assert parse_response(raw)[0] == 200


def test_slowloris_head_is_closed_by_the_deadline_and_others_are_served(live):
    timeout = make_settings().server.header_timeout_s
    s = socket.create_connection(("127.0.0.1", live.port))
    start = time.monotonic()
    data = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-Slow: " % live.port
    stop = threading.Event()

    def drip():
        for b in data + b"a" * 100:
            if stop.is_set():
                return
            try:
                s.send(bytes([b]))
            except OSError:
                return
            time.sleep(0.05)

    t = threading.Thread(target=drip)
    t.start()
    assert live.chat()[0] == 200  # another client is served meanwhile
    raw = read_until_closed(s, timeout + 5)
    elapsed = time.monotonic() - start
    stop.set()
    t.join()
    s.close()
    check_closed_with(live, raw, 408, "request_timeout")
    assert timeout - 0.2 <= elapsed <= timeout + 1.5


def test_silent_connection_is_closed(live):
    timeout = make_settings().server.header_timeout_s
    with socket.create_connection(("127.0.0.1", live.port)) as s:
        start = time.monotonic()
        raw = read_until_closed(s, timeout + 5)
        assert time.monotonic() - start <= timeout + 1.5
    assert parse_response(raw)[0] in (0, 408)


# ------------------------------------------------------------------------------------------ row 9: bodies


def test_content_length_over_cap_is_413_before_the_body(live):
    cap = max_body_bytes(make_settings())
    before = live.counters()
    with socket.create_connection(("127.0.0.1", live.port), timeout=5) as s:
        s.sendall(head(live, extra=b"Content-Length: %d\r\n\r\n" % (cap + 1)))  # headers only: no body sent
        raw = read_until_closed(s, 5)
    check_closed_with(live, raw, 413, "request_too_large")
    assert parse_response(raw)[1]["connection"] == "close"
    assert live.counters() == before
    live.assert_ok_after()


def test_chunked_body_over_cap_is_413_mid_stream(live):
    cap = max_body_bytes(make_settings())
    before = live.counters()
    sent = [0]
    with socket.create_connection(("127.0.0.1", live.port), timeout=5) as s:
        s.sendall(head(live, extra=b"Transfer-Encoding: chunked\r\n\r\n"))
        chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)

        def send():  # the client keeps sending (up to 3x the cap) until the server stops reading
            try:
                while sent[0] < 3 * cap:
                    s.sendall(chunk)
                    sent[0] += 65536
            except OSError:
                pass

        sender = threading.Thread(target=send)
        sender.start()
        raw = read_until_closed(s, 10)
        at_answer = sent[0]
        sender.join()
    check_closed_with(live, raw, 413, "request_too_large")
    assert at_answer < 3 * cap  # answered once the cap was crossed, long before the client was done
    assert live.counters() == before
    live.assert_ok_after()


def test_content_length_larger_than_the_body_times_out(live):
    before = live.counters()
    start = time.monotonic()
    raw = raw_exchange(
        live.port, head(live, extra=b"Content-Length: 1000\r\n\r\n") + b'{"model": "m"', timeout=10
    )
    check_closed_with(live, raw, 408, "request_timeout")
    assert time.monotonic() - start < make_settings().server.body_timeout_s + 2
    assert live.counters() == before
    live.assert_ok_after()


def test_content_length_larger_than_the_body_then_eof_closes(live):
    before = live.counters()
    with socket.create_connection(("127.0.0.1", live.port), timeout=5) as s:
        s.sendall(head(live, extra=b"Content-Length: 1000\r\n\r\n") + b'{"model": "m"')
        s.shutdown(socket.SHUT_WR)
        raw = read_until_closed(s, 5)
    assert parse_response(raw)[0] in (0, 400)
    assert live.counters() == before
    live.assert_ok_after()


def test_content_length_smaller_than_the_body(live):
    before = live.counters()
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":2}'
    raw = raw_exchange(live.port, head(live, extra=b"Content-Length: 10\r\n\r\n") + body)
    statuses = statuses_in(raw)
    assert statuses == [400]  # the truncated JSON; the rest is an incomplete request line, then closed
    assert live.counters() == before
    live.assert_ok_after()


def test_conflicting_lengths_are_refused(live):
    before = live.counters()
    for extra in (
        b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef",
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"Content-Length: -1\r\n\r\n",
        b"Content-Length: 1e3\r\n\r\n",
    ):
        raw = raw_exchange(live.port, head(live, extra=extra))
        assert parse_response(raw)[0] == 400, (extra, raw[:200])
    assert live.counters() == before
    live.assert_ok_after()


def test_keep_alive_and_pipelined_requests_still_work(live):
    one = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % live.port
    body = b'{"model":"m","messages":[{"role":"user","content":"' + b"x" * 30000 + b'"}],"max_tokens":1}'
    post = head(live, extra=b"Content-Length: %d\r\n\r\n" % len(body)) + body
    last = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n" % live.port
    raw = raw_exchange(live.port, [one + post + one, last], pause=0.5)  # pipelined, then one more
    statuses = statuses_in(raw)
    assert statuses == [200, 400, 200, 200]  # the POST's text is over what a 512-token context can hold
