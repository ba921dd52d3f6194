"""One daemon for many clients: two stdio clients started together share one daemon and one model load; a
daemon killed mid-request is restarted and the request resubmitted to completion."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from tests.stdio.conftest import Rpc, command, daemon_log, discovery

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0}


def _serve_pids(env: dict) -> set[int]:
    """Live `pixdesk serve` processes of this env (by their XDG_RUNTIME_DIR)."""
    out = subprocess.run(["pgrep", "-f", "pixdesk serve"], capture_output=True, text=True).stdout.split()
    pids = set()
    for pid in map(int, out):
        try:
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"XDG_RUNTIME_DIR={env['XDG_RUNTIME_DIR']}".encode() in environ:
            pids.add(pid)
    return pids


def test_two_clients_started_together_share_one_daemon(fresh_env, tiny_dir):
    a = Rpc([*command("stdio"), "--model", str(tiny_dir)], fresh_env)
    b = Rpc([*command("stdio"), "--model", str(tiny_dir)], fresh_env)
    ra, rb = a.request("chat", CHAT), b.request("chat", CHAT)
    assert a.wait(ra, 120)["result"]["usage"]["completion_tokens"] >= 1
    assert b.wait(rb, 120)["result"]["usage"]["completion_tokens"] >= 1
    pid_a = a.call("initialize")["result"]["daemon"]["pid"]
    pid_b = b.call("initialize")["result"]["daemon"]["pid"]
    assert pid_a == pid_b == discovery(fresh_env)["pid"]
    assert _serve_pids(fresh_env) == {pid_a}
    log = daemon_log(fresh_env)
    assert log.count("model ready in") == 1 and log.count("Started server process") == 1, log[-3000:]
    assert a.close() == 0 and b.close() == 0


def test_killed_daemon_is_restarted_and_the_request_completes(fresh_env, tiny_dir):
    proc = Rpc([*command("stdio"), "--model", str(tiny_dir)], fresh_env)
    assert proc.call("chat", CHAT, timeout=120)["result"]
    old = discovery(fresh_env)["pid"]
    rid = proc.request("chat", {**CHAT, "stream": True, "max_tokens": 3000})
    while not any(n["params"].get("id") == rid for n in proc.notes):
        proc.notes.append(proc.next_frame())
    os.kill(old, signal.SIGKILL)
    result = proc.wait(rid, 180)
    assert "result" in result, (result, b"".join(proc.err)[-3000:].decode(), daemon_log(fresh_env)[-3000:])
    mine = [n for n in proc.notes if n["params"].get("id") == rid]
    restart = [i for i, n in enumerate(mine) if n["method"] == "stream/restart"]
    assert len(restart) == 1 and restart[0] > 0  # some text came before the kill, then the restart
    text = "".join(n["params"]["delta"]["content"] for n in mine[restart[0] + 1 :])
    answer = result["result"]["choices"][0]
    assert answer["message"]["content"] == text and answer["finish_reason"] in ("stop", "length")
    new = discovery(fresh_env)["pid"]
    assert new != old and proc.call("initialize")["result"]["daemon"]["restarts"] == 1
    assert proc.close() == 0
    deadline = time.monotonic() + 5
    while _serve_pids(fresh_env) - {new} and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _serve_pids(fresh_env) == {new}
