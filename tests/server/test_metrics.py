"""/metrics (Prometheus text) and the request log: counts and timings only, never content (row 32)."""

from __future__ import annotations

import logging
import re

from tests.server.conftest import data_uri, png, sse_events

SAMPLE = re.compile(r'^([a-z_]+)(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? (-?[0-9.e+-]+|NaN)$')


def scrape(live) -> dict[str, float]:
    status, headers, body = live.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    out = {}
    for line in body.decode().splitlines():
        if line.startswith("#"):
            assert line.startswith(("# HELP ", "# TYPE "))
            continue
        m = SAMPLE.match(line)
        assert m, line
        out[line.rsplit(" ", 1)[0]] = float(line.rsplit(" ", 1)[1])
    return out


def test_metrics_cover_requests_tokens_ttft_queue_cache_memory(live):
    before = scrape(live)
    live.chat("hello there", max_tokens=5)
    sse_events(live, {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    live.request("GET", "/v1/models", key=False)
    after = scrape(live)
    ok = 'pixdesk_http_requests_total{method="POST",route="/v1/chat/completions",status="200"}'
    denied = 'pixdesk_http_requests_total{method="GET",route="/v1/models",status="401"}'
    assert after[ok] == before.get(ok, 0) + 2 and after[denied] == before.get(denied, 0) + 1
    completion = 'pixdesk_tokens_total{kind="completion"}'
    assert after[completion] >= before.get(completion, 0) + 8
    count = "pixdesk_time_to_first_token_seconds_count"
    assert after[count] == before.get(count, 0) + 2
    assert after['pixdesk_time_to_first_token_seconds_bucket{le="+Inf"}'] == after[count]
    assert after["pixdesk_generation_tokens_per_second"] > 0
    for key in (
        'pixdesk_queue_depth{priority="interactive"}',
        'pixdesk_queue_depth{priority="batch"}',
        "pixdesk_prefix_cache_hit_ratio",
        'pixdesk_memory_bytes{device="cpu"}',
        "pixdesk_model_ready",
        "pixdesk_free_kv_slots",
    ):
        assert key in after, key
    assert after['pixdesk_memory_bytes{device="cpu"}'] > 10e6 and after["pixdesk_model_ready"] == 1


def test_prefix_cache_hits_show_in_ratio_and_cached_tokens(live):
    long = "The image shows a screenshot of a code editor with an error message. " * 4
    body = {"model": "m", "messages": [{"role": "user", "content": long}], "max_tokens": 2, "temperature": 0}
    live.request("POST", "/v1/chat/completions", body)
    status, _, out = live.request("POST", "/v1/chat/completions", body)
    assert status == 200 and out["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    assert scrape(live)["pixdesk_prefix_cache_hit_ratio"] > 0


def test_logs_carry_no_content(live, caplog):
    secret = "zebra-violet-7731"
    with caplog.at_level(logging.DEBUG):
        live.chat(f"my secret is {secret}", max_tokens=3)
        live.request(
            "POST",
            "/v1/chat/completions",
            {
                "model": secret,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": secret},
                            {"type": "image_url", "image_url": data_uri(png(20, 20))},
                        ],
                    }
                ],
                "max_tokens": 2,
            },
        )
        live.request(
            "POST",
            "/v1/chat/completions",
            {"model": "m", "messages": [{"role": "user", "content": secret}], "temperature": secret},
        )
        live.request("GET", f"/v1/models?q={secret}")
    assert caplog.records, "the request log is on"
    assert secret not in caplog.text and live.key not in caplog.text
