"""The command table, the optional stdio/MCP fronts, the JSONL writer's recovery, and /health waiting."""

from __future__ import annotations

import importlib.util
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pixdesk.cli import build_parser, main
from pixdesk.cli.batch import LineWriter, recover
from pixdesk.cli.remote import DaemonSession
from pixdesk.errors import ModelLoading, ModelUnavailable


def test_every_command_is_registered_and_fronts_only_when_present():
    names = set(build_parser([])._subparsers._group_actions[0].choices)
    assert {"ask", "html", "chart", "receipt", "snap", "serve", "token", "status", "stop", "open"} <= names
    for front in ("stdio", "mcp"):
        present = importlib.util.find_spec(f"pixdesk.server.{front}") is not None
        assert (front in names) == present


def test_hotkey_flags_parse():
    p = build_parser(["snap"])
    for args in (
        ["--select"],
        ["--window"],
        ["--clipboard"],
        ["--full"],
        ["--monitor", "2"],
        ["--region", "1,2,3,4"],
    ):
        ns = p.parse_args(["snap", *args, "--notify", "--copy", "--tile", "what is this?"])
        assert ns.notify and ns.copy and ns.tile and ns.words == ["what is this?"]
    with pytest.raises(SystemExit):
        p.parse_args(["snap", "--window", "--select"])


def test_partial_last_line_is_cut_and_whole_lines_kept(tmp_path):
    out = tmp_path / "out.jsonl"
    writer = LineWriter(out)
    writer.write({"file": "a.png", "data": {}})
    writer.write({"file": "b.png", "data": {"é": 1}})
    writer.close()
    whole = out.read_bytes()
    out.write_bytes(whole + b'{"file": "c.png", "da')
    assert recover(out) == ({"a.png", "b.png"}, len(b'{"file": "c.png", "da'))
    assert out.read_bytes() == whole and recover(out) == ({"a.png", "b.png"}, 0)
    assert [json.loads(line)["file"] for line in whole.splitlines()] == ["a.png", "b.png"]


def test_usage_errors_exit_2(capsys):
    assert main(["receipt", "--jsonl", "x.jsonl", "missing.png"]) == 2
    assert "folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("health", "error", "needle"),
    [((503, {"status": "loading", "progress": 0.5}), ModelLoading, "50%"),
     ((503, {"status": "loading", "progress": 1.0, "phase": "warm-up"}), ModelLoading, "warming up"),
     ((503, {"status": "failed"}), ModelUnavailable, "could not load")],
)  # fmt: skip
def test_waiting_for_health_ends_with_a_clear_error(health, error, needle):
    class Health(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            body = json.dumps(health[1]).encode()
            self.send_response(health[0])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        session = DaemonSession(f"http://127.0.0.1:{server.server_port}", "k" * 20)
        with pytest.raises(error, match=needle):
            session.wait_ready(0.5, poll_s=0.05)
    finally:
        server.shutdown()
