"""`pixdesk chart | receipt | html` on one image: the rendered forms on stdout, warnings on stderr.

chart and receipt run against the real daemon (tiny model, grammar-constrained JSON). The tiny model never
writes HTML, so `html` runs against a stand-in daemon that answers with a fixed document - after a first
429, which the client must wait out as Retry-After says."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from pixdesk.server.discovery import InstanceLock, private_dir, read_api_key, write_discovery
from tests.cli.conftest import make_env, pixdesk


@pytest.fixture(scope="module")
def chart_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "chart.png"
    Image.new("RGB", (64, 48), (30, 90, 200)).save(path)
    return path


@pytest.mark.parametrize("fmt", ["md", "csv", "json"])
def test_chart_prints_the_chosen_form(daemon, chart_png, fmt):
    out = pixdesk(daemon.env, "chart", str(chart_png), "--format", fmt, "--max-tokens", "150")
    assert out.returncode == 0, out.stderr
    if fmt == "json":
        data = json.loads(out.stdout)
        assert {"title", "chart_type", "x_axis", "y_axis", "categories", "series"} <= set(data)
    elif fmt == "csv":
        rows = list(csv.reader(io.StringIO(out.stdout)))
        assert rows and len(rows[0]) >= 1
    else:
        assert "|---|" in out.stdout
    assert "Traceback" not in out.stderr


def test_receipt_prints_json_and_other_forms(daemon, chart_png):
    out = pixdesk(daemon.env, "receipt", str(chart_png), "--max-tokens", "150")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert {"merchant", "date", "currency", "items", "subtotal", "tax", "tip", "total"} == set(data)
    as_csv = pixdesk(daemon.env, "receipt", str(chart_png), "--max-tokens", "150", "--format", "csv")
    assert as_csv.returncode == 0 and as_csv.stdout.startswith("item,quantity,unit price,total\n")
    both = pixdesk(daemon.env, "receipt", str(chart_png), "--clipboard")
    assert both.returncode == 2 and "one image" in both.stderr


DOC = "<!DOCTYPE html>\n<html>\n<head><title>t</title></head>\n<body><h1>Hello</h1></body>\n</html>"


class StandIn(BaseHTTPRequestHandler):
    """/health ready; /v1/tasks/html: 429 the first time, then a task.result holding DOC."""

    calls: list[dict] = []
    key = ""

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for k, v in {
            "Content-Type": "application/json",
            "Content-Length": str(len(data)),
            **(headers or {}),
        }.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(200, {"status": "ready"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.calls.append({"t": time.monotonic(), "auth": self.headers["Authorization"], "body": body})
        if len(self.calls) == 1:
            error = {"message": "2 requests are waiting", "type": "rate_limit_error", "code": "overloaded"}
            return self._send(429, {"error": error}, {"Retry-After": "1"})
        result = {"object": "task.result", "task": "html", "text": DOC, "data": {"html": DOC, "problems": []},
                  "rendered": {"html": DOC}, "warnings": ["text after the HTML was dropped"],
                  "finish_reason": "stop", "usage": None}  # fmt: skip
        self._send(200, result)


@pytest.fixture
def stand_in(tmp_path):
    env = make_env(tmp_path)
    run_dir = private_dir(Path(env["XDG_RUNTIME_DIR"]) / "pixdesk")
    key_file = Path(env["XDG_CONFIG_HOME"]) / "pixdesk" / "api_key"
    StandIn.calls, StandIn.key = [], read_api_key(key_file, create=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    lock = InstanceLock(run_dir)
    assert lock.acquire()  # the discovery file counts only while someone holds the lock
    info = {"pid": os.getpid(), "url": f"http://127.0.0.1:{server.server_port}", "version": "test",
            "api_key_file": str(key_file)}  # fmt: skip
    write_discovery(run_dir, info)
    yield env
    lock.release()
    server.shutdown()


def test_html_waits_out_429_and_writes_the_document(stand_in, chart_png, tmp_path):
    out = pixdesk(stand_in, "html", str(chart_png))
    assert out.returncode == 0, out.stderr
    assert out.stdout == DOC + "\n"
    assert "busy" in out.stderr and "retrying in 1 s" in out.stderr
    assert "warning: text after the HTML was dropped" in out.stderr
    first, second = StandIn.calls
    assert second["t"] - first["t"] >= 0.9  # Retry-After honoured
    assert second["auth"] == f"Bearer {StandIn.key}"
    (uri,) = second["body"]["images"]  # the bytes travel, never the path
    assert uri == "data:image/png;base64," + base64.b64encode(chart_png.read_bytes()).decode()
    target = tmp_path / "page.html"
    written = pixdesk(stand_in, "html", str(chart_png), "-o", str(target), "--tailwind")
    assert written.returncode == 0 and written.stdout == "" and target.read_text() == DOC + "\n"
    assert StandIn.calls[-1]["body"]["options"] == {"tailwind": True, "temperature": 0.0}
