"""Many clients at once (rows 26, 27, 30): batched streaming, disconnects cancel only their own generation,
queue overflow gets 429 + Retry-After, batch priority yields to interactive, engine faults stay contained."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from pixdesk.server.app import create_app
from tests.server.conftest import API_KEY, Live, ServerThread, make_engine, make_settings, sse_events


def chat(max_tokens, **extra):
    return {
        "model": "m",
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        **extra,
    }


@pytest.fixture()
def slow(live):
    """Slow the worker a little per decode step, so streams overlap and clients can leave mid-way."""
    live.engine.scheduler.stage_hook = lambda stage, seq: time.sleep(0.002) if stage == "decode" else None
    yield
    live.engine.scheduler.stage_hook = None


def wait_idle(engine, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = engine.stats()
        if s["active"] == 0 and not any(s["queued"].values()):
            return s
        time.sleep(0.02)
    raise AssertionError(f"engine not idle: {engine.stats()}")


def test_32_concurrent_streams_batch_and_complete(live, slow):
    before = live.engine.stats()
    with ThreadPoolExecutor(32) as pool:
        results = list(
            pool.map(lambda i: sse_events(live, chat(12, stream_options={"include_usage": True})), range(32))
        )
    after = wait_idle(live.engine)
    for status, events in results:
        assert status == 200 and events[-1] == "[DONE]"
        usage = events[-2]["usage"]
        finish = [e["choices"][0]["finish_reason"] for e in events[:-2] if e["choices"][0]["finish_reason"]]
        assert finish == ["length"] and usage["completion_tokens"] == 12 and usage["prompt_tokens"] > 0
    assert after["submitted"] == before["submitted"] + 32
    assert after["finished"].get("length", 0) == before["finished"].get("length", 0) + 32
    steps = {
        k: v - before["seqs_per_decode_step"].get(k, 0) for k, v in after["seqs_per_decode_step"].items()
    }
    assert max(k for k, v in steps.items() if v > 0) > 1  # decode steps carried several sequences
    assert after["free_slots"] == live.engine.config.max_batch


def _rst_close(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close -> TCP RST
    sock.close()


@pytest.mark.parametrize("how", ["close", "rst"])
def test_disconnect_cancels_only_its_own_generation(live, slow, how):
    before = live.engine.stats()
    results: list = []
    others = [threading.Thread(target=lambda: results.append(sse_events(live, chat(60)))) for _ in range(3)]
    for t in others:
        t.start()
    sock = socket.create_connection(("127.0.0.1", live.port))
    body = json.dumps(chat(400, stream=True)).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % (live.port, live.key.encode(), len(body))
        + body
    )
    got = b""
    while got.count(b"data: ") < 4:  # a few chunks, then leave
        got += sock.recv(4096)
    (sock.close if how == "close" else lambda: _rst_close(sock))()
    for t in others:
        t.join(60)
    after = wait_idle(live.engine)
    assert after["finished"].get("cancelled", 0) == before["finished"].get("cancelled", 0) + 1
    assert after["finished"].get("length", 0) == before["finished"].get("length", 0) + 3
    assert all(status == 200 and events[-1] == "[DONE]" for status, events in results)
    assert after["free_slots"] == live.engine.config.max_batch and after["prefix_cache"]["pinned_blocks"] == 0
    live.assert_ok_after()


def test_non_streamed_disconnect_cancels_too(live, slow):
    before = live.engine.stats()["finished"].get("cancelled", 0)
    sock = socket.create_connection(("127.0.0.1", live.port))
    body = json.dumps(chat(400)).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % (live.port, live.key.encode(), len(body))
        + body
    )
    deadline = time.monotonic() + 10
    while live.engine.stats()["active"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    sock.close()
    after = wait_idle(live.engine)
    assert after["finished"].get("cancelled", 0) == before + 1


@pytest.fixture()
def gated(tiny_dir, request):
    """Two KV slots, a short queue, and a gate that holds the worker inside its first prefill."""
    engine = make_engine(tiny_dir, max_batch=2, max_queue=getattr(request, "param", 2))
    gate = threading.Event()
    engine.scheduler.stage_hook = lambda stage, seq: gate.wait(30) if stage == "prefill" else None
    settings = make_settings()
    with ServerThread(create_app(engine, settings, API_KEY), settings) as srv:
        yield Live(srv.port, engine, None, None), gate
    gate.set()
    engine.stop()


def test_queue_overflow_is_429_with_retry_after(gated):
    live, gate = gated
    with ThreadPoolExecutor(4) as pool:
        admitted = []
        for _ in range(3):  # the first holds the worker (in prefill), two wait in the queue
            admitted.append(pool.submit(live.chat, "hi"))
            time.sleep(0.05)
        deadline = time.monotonic() + 10
        while sum(live.engine.stats()["queued"].values()) < 2:
            assert time.monotonic() < deadline, live.engine.stats()
            time.sleep(0.01)
        before = live.counters()
        status, headers, out = live.chat("one too many")
        assert (status, out["error"]["code"]) == (429, "overloaded")
        assert 1 <= int(headers["retry-after"]) <= 60
        assert live.counters() == before
        gate.set()
        assert all(f.result()[0] == 200 for f in admitted)
    live.assert_ok_after()


@pytest.mark.parametrize("gated", [8], indirect=True)
def test_interactive_is_served_before_batch(gated):
    live, gate = gated
    gate.set()
    live.engine.scheduler.stage_hook = lambda stage, seq: time.sleep(0.003) if stage == "decode" else None
    order: list[str] = []
    lock = threading.Lock()

    def run(priority, tokens):
        status, _, out = live.chat("go", max_tokens=tokens, priority=priority)
        with lock:
            order.append(priority)
        return status

    with ThreadPoolExecutor(4) as pool:
        batch = [pool.submit(run, "batch", 150) for _ in range(3)]  # batch may hold only max_batch - 1 slots
        time.sleep(0.2)
        interactive = pool.submit(run, "interactive", 2)
        assert interactive.result() == 200 and all(f.result() == 200 for f in batch)
    assert order.index("interactive") <= 1  # not behind the queued batch jobs


class Boom(BaseException):
    """A panic that is not an Exception (e.g. from a native tokenizer)."""


@pytest.mark.parametrize("exc", [RuntimeError("CUDA out of memory"), Boom()])
def test_engine_faults_fail_one_request_with_a_generic_500(live, exc):
    def hook(stage, seq):
        if stage == "prefill" and seq.params.seed == 4242:
            raise exc

    live.engine.scheduler.stage_hook = hook
    try:
        status, _, out = live.chat("hi", seed=4242)
        assert (status, out["error"]["code"]) == (500, "internal_error")
        assert "CUDA" not in out["error"]["message"] and "Traceback" not in json.dumps(out)
        status, events = sse_events(live, chat(4, seed=4242))
        assert status == 200 and events[-2]["error"]["code"] == "internal_error" and events[-1] == "[DONE]"
    finally:
        live.engine.scheduler.stage_hook = None
    live.assert_ok_after()


def test_fault_mid_stream_becomes_an_error_chunk(live):
    def hook(stage, seq):
        if stage == "sample" and seq.params.seed == 77 and len(seq.generated) >= 6:
            raise RuntimeError("device lost")

    live.engine.scheduler.stage_hook = hook
    try:
        status, events = sse_events(live, chat(20, seed=77))
    finally:
        live.engine.scheduler.stage_hook = None
    content = [e for e in events[1:-2] if e != "[DONE]" and "choices" in e]
    assert status == 200 and len(content) >= 1
    assert events[-2] == {
        "error": {
            "message": "internal error while generating; see the daemon log",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    }
    assert events[-1] == "[DONE]"
    live.assert_ok_after()
