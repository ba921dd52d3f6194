"""`pixdesk stdio` over real pipes: handshake, streaming, concurrency, cancel, bad input, framing, EOF."""

from __future__ import annotations

import os
import random
import sys
import time

import pytest
from PIL import Image

from tests.stdio.conftest import Rpc, command, data_uri, metric, png_bytes

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "temperature": 0}


@pytest.fixture(scope="module")
def rpc(shared_env, tiny_dir):
    proc = Rpc([*command("stdio"), "--model", str(tiny_dir)], shared_env)
    yield proc
    assert proc.close() == 0


def test_initialize_answers_at_once_then_reports_the_model(shared_env, tiny_dir):
    proc = Rpc([*command("stdio"), "--model", str(tiny_dir)], shared_env)
    t0 = time.monotonic()
    first = proc.call("initialize", {"clientInfo": {"name": "test"}})["result"]
    assert time.monotonic() - t0 < 5  # no model load (or daemon start) in the way
    assert first["protocolVersion"] == "pixdesk-stdio/1" and "chat" in first["capabilities"]["methods"]
    assert first["state"] in ("starting", "loading", "ready")
    assert proc.call("chat", CHAT)["result"]["usage"]["completion_tokens"] >= 1
    again = proc.call("initialize")["result"]
    assert again["state"] == "ready" and again["model"]["id"] == tiny_dir.name and again["daemon"]["pid"]
    assert proc.call("models")["result"]["data"][0]["id"] == tiny_dir.name
    assert proc.close() == 0


def test_streaming_notifications_carry_the_request_id(rpc):
    rid = rpc.request("chat", {**CHAT, "stream": True, "max_tokens": 12})
    result = rpc.wait(rid)["result"]
    deltas = [n["params"]["delta"]["content"] for n in rpc.notes if n["params"]["id"] == rid]
    assert deltas and "".join(deltas) == result["choices"][0]["message"]["content"]
    assert result["object"] == "chat.completion"
    assert result["choices"][0]["finish_reason"] in ("length", "stop")
    assert result["usage"]["completion_tokens"] == 12


def test_two_concurrent_requests_interleave(rpc):
    rpc.notes.clear()
    a = rpc.request("chat", {**CHAT, "stream": True, "max_tokens": 40}, rid="a")
    b = rpc.request("chat", {**CHAT, "stream": True, "max_tokens": 40, "messages": [
        {"role": "user", "content": "another question"}]}, rid=7)  # fmt: skip
    ra, rb = rpc.wait(a)["result"], rpc.wait(b)["result"]
    order = [n["params"]["id"] for n in rpc.notes if n["method"] == "stream/delta"]
    pos_a = [i for i, r in enumerate(order) if r == "a"]
    pos_b = [i for i, r in enumerate(order) if r == 7]
    assert pos_b[0] < pos_a[-1] and pos_a[0] < pos_b[-1]  # the two streams overlapped
    for rid, res in (("a", ra), (7, rb)):
        text = "".join(n["params"]["delta"]["content"] for n in rpc.notes if n["params"]["id"] == rid)
        assert text == res["choices"][0]["message"]["content"] and res["usage"]["completion_tokens"] == 40


@pytest.mark.parametrize("how", ["cancel", "$/cancelRequest"])
def test_cancel_stops_a_request_and_the_next_one_works(rpc, shared_env, how):
    rpc.notes.clear()
    rid = rpc.request("chat", {**CHAT, "stream": True, "max_tokens": 3000}, rid=f"long-{how}")
    while not any(n["params"]["id"] == rid for n in rpc.notes):
        rpc.notes.append(rpc.next_frame())
    if how == "cancel":
        assert rpc.call("cancel", {"id": rid})["result"] == {"cancelled": True}
    else:
        rpc.send({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": rid}})
    err = rpc.wait(rid)["error"]
    assert (err["code"], err["data"]["code"]) == (-32041, "cancelled")
    deadline = time.monotonic() + 5  # row 26: the daemon let go of the generation (KV slot back)
    while metric(shared_env, "pixdesk_active_sequences") != 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert rpc.call("chat", CHAT)["result"]["usage"]["completion_tokens"] >= 1


def test_bad_input_is_answered_and_the_process_keeps_serving(rpc, tmp_path):
    def error_for(raw: bytes) -> dict:
        rpc.send_raw(raw)
        frame = rpc.next_frame()
        assert frame["id"] is None, frame
        return frame["error"]

    assert error_for(b"{not json\n")["code"] == -32700
    assert error_for(b"\xff\xfe garbage \x00\n")["code"] == -32700
    assert error_for(b'[{"jsonrpc": "2.0", "id": 1, "method": "models"}]\n')["code"] == -32600  # batch
    assert error_for(b"[]\n")["code"] == -32600
    assert error_for(b'{"id": 1, "method": "models"}\n')["code"] == -32600  # no "jsonrpc": "2.0"
    assert error_for(b'{"jsonrpc": "2.0", "id": 1.5, "method": "models"}\n')["code"] == -32600
    assert rpc.call("no/such/method")["error"]["code"] == -32601
    err = rpc.call("chat", {"messages": "hi"})["error"]
    assert (err["code"], err["data"]) == (-32602, {"code": "invalid_request", "param": "messages"})
    err = rpc.call("chat", {**CHAT, "temperature": -1})["error"]
    assert (err["code"], err["data"]["param"]) == (-32602, "temperature")
    err = rpc.call("chat", {**CHAT, "stream": "yes"})["error"]
    assert err["data"]["param"] == "stream"
    err = rpc.call("task", {"name": "ask", "images": [str(tmp_path / "missing.png")]})["error"]
    assert err["data"] == {"code": "not_a_regular_file", "param": "images[0]"} and err["code"] == -32066
    (tmp_path / "fifo").exists() or os.mkfifo(tmp_path / "fifo")
    err = rpc.call("task", {"name": "ask", "images": [{"path": str(tmp_path / "fifo")}]})["error"]
    assert err["data"]["code"] == "not_a_regular_file"
    err = rpc.call("task", {"name": "nope", "images": [data_uri(png_bytes())]})["error"]
    assert err["data"]["code"] == "not_found"
    rid = rpc.request("models", rid="dup")
    rpc.request("chat", {**CHAT, "max_tokens": 200}, rid="slow")
    rpc.request("models", rid="slow")  # the same id while "slow" is in flight
    assert rpc.wait("slow")["error"]["code"] == -32600
    assert "result" in rpc.wait(rid) and "result" in rpc.wait("slow")
    rpc.send_raw(b"x" * (64 * 1024 * 1024 + 10) + b"\n")  # over the 64 MiB line cap: skipped, reported
    assert rpc.next_frame(120)["error"]["code"] == -32600
    assert rpc.call("chat", CHAT)["result"]["usage"]["completion_tokens"] >= 1


def test_a_5_mb_image_data_uri_on_one_line(rpc, tmp_path):
    rng = random.Random(0)
    img = Image.frombytes("RGB", (1400, 1300), rng.randbytes(1400 * 1300 * 3))
    img.save(tmp_path / "noise.png")
    raw = (tmp_path / "noise.png").read_bytes()
    assert len(raw) > 5_000_000
    content = [{"type": "image_url", "image_url": {"url": data_uri(raw)}}, {"type": "text", "text": "What?"}]
    res = rpc.call("chat", {**CHAT, "messages": [{"role": "user", "content": content}]}, timeout=120)
    assert res["result"]["usage"]["prompt_tokens"] > 20  # the image's tokens are in the prompt


def test_images_by_path_and_file_url_and_content_length_framing(rpc, tmp_path):
    path = tmp_path / "red.png"
    path.write_bytes(png_bytes())
    content = [{"type": "image", "path": str(path)}, {"type": "image_url", "image_url": path.as_uri()},
               {"type": "text", "text": "Compare"}]  # fmt: skip
    body = b'{"jsonrpc": "2.0", "id": "cl", "method": "chat", "params": ' + (
        __import__("json").dumps({**CHAT, "messages": [{"role": "user", "content": content}]}).encode() + b"}"
    )
    rpc.send_raw(b"Content-Length: %d\r\n\r\n" % len(body) + body)
    res = rpc.wait("cl")["result"]
    assert res["usage"]["prompt_tokens"] > 20
    opts = {"question": "Colour?", "max_tokens": 5}
    task = rpc.call("task", {"name": "ask", "images": [str(path)], "options": opts})
    assert task["result"]["object"] == "task.result" and task["result"]["task"] == "ask"


def test_screenshot_and_screen_source_under_xvfb(rpc, shared_env, tiny_dir, xvfb_display):
    proc = Rpc([*command("stdio"), "--model", str(tiny_dir)], {**shared_env, "DISPLAY": xvfb_display})
    shot = proc.call("screenshot", {"source": "screen"})["result"]
    assert shot["image"].startswith("data:image/png;base64,") and shot["mime"] == "image/png"
    content = [{"type": "image", "source": "region", "region": [0, 0, 64, 48]}, {"type": "text", "text": "?"}]
    res = proc.call("chat", {**CHAT, "messages": [{"role": "user", "content": content}]})
    assert res["result"]["usage"]["prompt_tokens"] > 10
    assert proc.call("screenshot", {"source": "region"})["error"]["data"]["param"] == "region"
    assert proc.close() == 0


WRAPPER = """
import os, subprocess, sys, threading, time
from pixdesk.server import rpc_framing
claim = rpc_framing.claim_stdout
def noisy():
    fd = claim()
    def spam():
        while True:
            print("library noise on sys.stdout", flush=True)
            os.write(1, b"C-level noise on fd 1\\n")
            subprocess.run(["echo", "child noise"])
            time.sleep(0.01)
    threading.Thread(target=spam, daemon=True).start()
    return fd
rpc_framing.claim_stdout = noisy
from pixdesk.server import stdio
stdio.claim_stdout = noisy
sys.exit(stdio.main(sys.argv[1:]))
"""


def test_stdout_holds_only_frames_while_a_library_prints(shared_env, tiny_dir):
    proc = Rpc([sys.executable, "-c", WRAPPER, "--model", str(tiny_dir)], shared_env)
    rid = proc.request("chat", {**CHAT, "stream": True, "max_tokens": 20})
    assert proc.wait(rid)["result"]["usage"]["completion_tokens"] == 20
    assert proc.close() == 0
    assert all(line.startswith(b'{"jsonrpc":"2.0"') for line in proc.raw) and len(proc.raw) > 2
    assert b"library noise" in b"".join(proc.err) and b"child noise" in b"".join(proc.err)


def test_eof_cancels_and_exits_0_and_exit_notification(shared_env, tiny_dir):
    proc = Rpc([*command("stdio"), "--model", str(tiny_dir)], shared_env)
    rid = proc.request("chat", {**CHAT, "stream": True, "max_tokens": 3000})
    proc.notes.append(proc.next_frame())  # generation is under way
    t0 = time.monotonic()
    assert proc.close() == 0 and time.monotonic() - t0 < 15
    assert not [f for f in proc.drain() if f.get("id") == rid]  # cancelled, not answered
    assert metric(shared_env, "pixdesk_active_sequences") == 0
    proc = Rpc([*command("stdio"), "--model", str(tiny_dir)], shared_env)
    rid, last = proc.request("chat", {**CHAT, "max_tokens": 30}), proc.request("shutdown")
    assert proc.close() == 0  # shutdown, then EOF: what was asked is answered first
    assert proc.wait(rid)["result"]["usage"]["completion_tokens"] == 30 and proc.wait(last)["result"] is None
    proc = Rpc([*command("stdio"), "--model", str(tiny_dir)], shared_env)
    assert proc.call("shutdown")["result"] is None
    assert proc.call("chat", CHAT)["error"]["data"]["code"] == "shutting_down"
    proc.send({"jsonrpc": "2.0", "method": "exit"})
    assert proc.proc.wait(15) == 0


def test_in_process_engine(tmp_path, tiny_dir):
    from tests.stdio.conftest import make_env

    env = make_env(tmp_path)
    proc = Rpc([*command("stdio"), "--in-process", "--model", str(tiny_dir)], env)
    res = proc.call("chat", {**CHAT, "stream": True}, timeout=120)["result"]
    assert res["usage"]["completion_tokens"] == 6
    assert proc.call("initialize")["result"]["mode"] == "in-process"
    assert proc.close() == 0
    assert not (tmp_path / "run" / "pixdesk" / "daemon.json").exists()  # no daemon was started
