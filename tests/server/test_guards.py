"""SECURITY.md rows 1-6: Host allow-list, Origin policy, CSRF simple requests, the API key.

Every refusal: exact status and error.code, engine counters unchanged, and the next valid request works.
"""

from __future__ import annotations

import logging

import pytest

from tests.server.conftest import parse_response, raw_exchange

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
ROUTES = [
    ("GET", "/health", None),
    ("GET", "/v1/models", None),
    ("POST", "/v1/chat/completions", CHAT),
    ("GET", "/metrics", None),
    ("OPTIONS", "/v1/chat/completions", None),
    ("GET", "/", None),
]


def refused(live, expect_status, expect_code, method, path, body=None, **kw):
    before = live.counters()
    status, headers, payload = live.request(method, path, body, **kw)
    assert (status, payload["error"]["code"]) == (expect_status, expect_code), payload
    assert "access-control-allow-origin" not in headers
    assert live.counters() == before
    return headers, payload


# ------------------------------------------------------------------------------------------ rows 1-2: Host


@pytest.mark.parametrize(
    "host",
    [
        "evil.example:{port}",
        "localhost.evil.com:{port}",
        "127.0.0.1.nip.io:{port}",
        "127.0.0.1:1",
        "127.0.0.1",
        "localhost.:{port}",
        "[::1]x:{port}",
    ],
)
@pytest.mark.parametrize("method,path,body", ROUTES)
def test_rebinding_hosts_are_refused_before_routing(live, host, method, path, body):
    refused(live, 403, "host_not_allowed", method, path, body, headers={"Host": host.format(port=live.port)})


def test_loopback_names_are_allowed(live):
    for host in ("127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}", "[::1]:{port}"):
        assert live.request("GET", "/health", headers={"Host": host.format(port=live.port)})[0] == 200


@pytest.mark.parametrize(
    "host_line",
    [
        b"",
        b"Host: :{port}\r\n",
        b"Host: [::1\r\n",
        b"Host: " + b"a" * 4000 + b"\r\n",
        b"Host: 127.0.0.1:{port}\r\nHost: evil.example\r\n",
    ],
)
def test_empty_or_odd_host_is_never_local(live, host_line):
    before = live.counters()
    for version in (b"HTTP/1.0", b"HTTP/1.1"):
        req = b"GET /v1/models " + version + b"\r\n" + host_line.replace(b"{port}", str(live.port).encode())
        req += b"Authorization: Bearer " + live.key.encode() + b"\r\nConnection: close\r\n\r\n"
        status, _, body = parse_response(raw_exchange(live.port, req))
        assert status in (400, 403), (host_line, status)
        if status == 403:
            assert body["error"]["code"] == "host_not_allowed"
    assert live.counters() == before
    live.assert_ok_after()


# ------------------------------------------------------------------------------------------ rows 3-4: Origin


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "null",
        "http://localhost.evil.com",
        "http://127.0.0.1:{port}.evil.com",
        "http://127.0.0.1:1",
        "https://127.0.0.1:{port}",
        "vscode-webview://x.evil",
    ],
)
@pytest.mark.parametrize("method,path,body", ROUTES)
def test_cross_site_origins_are_refused(live, origin, method, path, body):
    headers = {"Origin": origin.format(port=live.port)}
    if method == "OPTIONS":
        headers["Access-Control-Request-Method"] = "POST"
    refused(live, 403, "origin_not_allowed", method, path, body, headers=headers)


def test_no_cors_subresource_without_origin_is_refused(live):
    # an <img src> from another site sends no Origin but does send Sec-Fetch-Site
    refused(live, 403, "origin_not_allowed", "GET", "/metrics", headers={"Sec-Fetch-Site": "cross-site"})
    refused(live, 403, "origin_not_allowed", "GET", "/metrics", headers={"Sec-Fetch-Site": "same-site"})
    assert live.request("GET", "/metrics", headers={"Sec-Fetch-Site": "same-origin"})[0] == 200


def test_own_origin_and_configured_pattern(tiny_dir):
    from pixdesk.server.app import create_app
    from tests.server.conftest import API_KEY, Live, ServerThread, make_engine, make_settings

    settings = make_settings(server={"allowed_origins": (r"vscode-webview://[a-z0-9-]+",)})
    engine = make_engine(tiny_dir, max_batch=2)
    with ServerThread(create_app(engine, settings, API_KEY), settings) as srv:
        live = Live(srv.port, engine, None, None)
        assert live.chat()[0] == 200
        own = live.request(
            "POST", "/v1/chat/completions", CHAT, headers={"Origin": f"http://localhost:{srv.port}"}
        )
        assert own[0] == 200 and "access-control-allow-origin" not in own[1]
        pre = live.request(
            "OPTIONS",
            "/v1/chat/completions",
            key=False,
            headers={"Origin": "vscode-webview://abc-123", "Access-Control-Request-Method": "POST"},
        )
        assert pre[0] == 204 and pre[1]["access-control-allow-origin"] == "vscode-webview://abc-123"
        call = live.request(
            "POST", "/v1/chat/completions", CHAT, headers={"Origin": "vscode-webview://abc-123"}
        )
        assert call[0] == 200 and call[1]["access-control-allow-origin"] == "vscode-webview://abc-123"
        for bad in ("vscode-webview://abc.evil", "xvscode-webview://abc", "vscode-webview://abc/x"):
            assert live.request("GET", "/v1/models", headers={"Origin": bad})[0] == 403
    engine.stop()


# ------------------------------------------------------------------------------------------ row 5: CSRF


@pytest.mark.parametrize(
    "ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x"]
)
def test_simple_requests_start_nothing(live, ctype):
    raw = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
    refused(
        live,
        401,
        "invalid_api_key",
        "POST",
        "/v1/chat/completions",
        raw=raw,
        key=False,
        headers={"Content-Type": ctype},
    )
    refused(
        live,
        415,
        "unsupported_media_type",
        "POST",
        "/v1/chat/completions",
        raw=raw,
        headers={"Content-Type": ctype},
    )
    live.assert_ok_after()


# ------------------------------------------------------------------------------------------ row 6: the key


@pytest.mark.parametrize(
    "auth",
    [
        None,
        "Bearer wrong",
        "Bearer {key_short}",
        "Bearer " + "k" * 10240,
        "Basic {key}",
        "Bearer {key}x",
        "{key}",
        "Bearer pxd-\u00e9\u00e8",
    ],
)
def test_bad_keys_get_401_with_challenge(live, auth, caplog):
    if auth:
        auth = auth.format(key=live.key, key_short=live.key[:-1])
    with caplog.at_level(logging.DEBUG):
        headers, body = refused(
            live,
            401,
            "invalid_api_key",
            "POST",
            "/v1/chat/completions",
            CHAT,
            key=False,
            headers={"Authorization": auth.encode("utf-8").decode("latin-1") if auth else None},
        )
    assert headers["www-authenticate"].startswith("Bearer")
    assert live.key not in str(body) and live.key not in caplog.text
    live.assert_ok_after()


@pytest.mark.parametrize("param", ["api_key", "key", "token", "access_token"])
def test_key_in_query_string_is_refused_even_when_right(live, param, caplog):
    with caplog.at_level(logging.DEBUG):
        refused(live, 401, "invalid_api_key", "GET", f"/v1/models?{param}={live.key}", key=False)
        refused(live, 401, "invalid_api_key", "GET", f"/v1/models?{param}={live.key}")
    assert live.key not in caplog.text


def test_only_health_is_public_and_says_only_ready(live):
    status, _, body = live.request("GET", "/health", key=False)
    assert status == 200 and body == {"status": "ready"}
    for method, path, body in [
        ("GET", "/v1/models", None),
        ("GET", "/metrics", None),
        ("POST", "/auth/code", {}),
        ("POST", "/v1/chat/completions", CHAT),
        ("POST", "/v1/completions", {"prompt": "x"}),
    ]:
        refused(live, 401, "invalid_api_key", method, path, body, key=False)
