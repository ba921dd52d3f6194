"""/v1/tasks over HTTP: the registry, a structured task (schema-valid JSON), streaming, and errors."""

from __future__ import annotations

import json

from tests.server.conftest import data_uri, png


def run(live, name, **body):
    return live.request("POST", f"/v1/tasks/{name}", {"images": [data_uri(png(48, 32))], **body})


def test_registry_is_listed(live):
    status, _, out = live.request("GET", "/v1/tasks")
    names = {t["name"] for t in out["data"]}
    assert status == 200 and {"ask", "html", "chart", "receipt"} <= names


def test_structured_task_returns_schema_shaped_data(live):
    before = live.engine.stats()["masked_steps"]
    status, _, out = run(live, "receipt", options={"max_tokens": 150, "seed": 1})
    assert status == 200, out
    assert out["object"] == "task.result" and out["task"] == "receipt" and out["id"].startswith("task-")
    assert isinstance(out["data"], dict) and json.loads(out["text"]) is not None
    assert out["usage"]["completion_tokens"] > 0 and "cached_tokens" in out["usage"]["prompt_tokens_details"]
    assert live.engine.stats()["masked_steps"] > before


def test_streamed_task(live):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=60)
    body = json.dumps(
        {
            "images": [data_uri(png())],
            "options": {"question": "What colour?", "max_tokens": 6},
            "stream": True,
        }
    )
    conn.request(
        "POST",
        "/v1/tasks/ask",
        body,
        {
            "Host": f"127.0.0.1:{live.port}",
            "Content-Type": "application/json",
            "Authorization": f"Bearer {live.key}",
        },
    )
    events = [e[6:] for e in conn.getresponse().read().decode().split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    result = json.loads(events[-2])
    deltas = [json.loads(e)["delta"] for e in events[:-2]]
    assert result["object"] == "task.result" and "".join(deltas) == result["text"]


def test_task_errors(live):
    before = live.counters()
    status, _, out = run(live, "nope")
    assert (status, out["error"]["code"]) == (404, "not_found")
    status, _, out = run(live, "ask", options={"max_tokens": 5})  # ask needs a question
    assert (status, out["error"]["code"], out["error"]["param"]) == (
        400,
        "invalid_request",
        "options.question",
    )
    status, _, out = run(live, "chart", options={"client_id": "someone-else"})
    assert (status, out["error"]["param"]) == (400, "options.client_id")
    status, _, out = live.request("POST", "/v1/tasks/chart", {"images": [data_uri(png())] * 13})
    assert (status, out["error"]["code"]) == (413, "too_many_images")
    status, _, out = live.request("POST", "/v1/tasks/chart", {"images": ["file:///etc/passwd"]})
    assert (status, out["error"]["code"], out["error"]["param"]) == (400, "url_not_allowed", "images[0]")
    status, _, out = live.request("POST", "/v1/tasks/chart", {"images": [data_uri(b"junk")]})
    assert (status, out["error"]["code"]) == (400, "invalid_image")
    assert live.counters() == before
    live.assert_ok_after()
