"""The chat page's serving and login contract (row 31's server half): strict CSP, public static files,
one-time codes exchanged for an HttpOnly SameSite=Strict cookie that API routes accept same-origin only."""

from __future__ import annotations

import pytest

from pixdesk.server.app import create_app
from pixdesk.server.auth import CODE_TTL_S, Authenticator
from tests.server.conftest import API_KEY, Live, ServerThread, make_engine, make_settings


@pytest.fixture(scope="module")
def site(tiny_dir, tmp_path_factory):
    web = tmp_path_factory.mktemp("web")
    (web / "index.html").write_text('<!doctype html><script src="/static/app.js"></script>')
    (web / "app.js").write_text("console.log('page');")
    engine = make_engine(tiny_dir, max_batch=2)
    settings = make_settings()
    with ServerThread(create_app(engine, settings, API_KEY, web_dir=web), settings) as srv:
        yield Live(srv.port, engine, None, None)
    engine.stop()


def test_page_and_static_files_are_public_with_a_strict_csp(site):
    for path, needle in (("/", b"<script src"), ("/static/app.js", b"console.log")):
        status, headers, body = site.request("GET", path, key=False)
        assert status == 200 and needle in body
        csp = headers["content-security-policy"]
        for directive in (
            "script-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ):
            assert directive in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "http" not in csp
        assert headers["x-content-type-options"] == "nosniff"
    assert site.request("GET", "/static/../app.py", key=False)[0] == 404
    assert site.request("GET", "/static/%2e%2e/%2e%2e/server/app.py", key=False)[0] == 404


def test_placeholder_when_the_page_is_not_built(tiny_dir, tmp_path):
    engine = make_engine(tiny_dir, max_batch=1)
    settings = make_settings()
    with ServerThread(create_app(engine, settings, API_KEY, web_dir=tmp_path / "none"), settings) as srv:
        status, headers, body = Live(srv.port, engine, None, None).request("GET", "/", key=False)
        assert status == 200 and b"pixdesk" in body and b"<script" not in body
        assert "script-src 'self'" in headers["content-security-policy"]
    engine.stop()


def _login(site) -> str:
    status, _, body = site.request("POST", "/auth/code", {})
    assert status == 200 and body["expires_in"] == CODE_TTL_S
    assert body["url"] == f"http://127.0.0.1:{site.port}/#code={body['code']}"
    origin = {"Origin": f"http://127.0.0.1:{site.port}"}
    status, headers, info = site.request(
        "POST", "/auth/exchange", {"code": body["code"]}, key=False, headers=origin
    )
    assert status == 200 and info["ok"] is True and info["demo"] is False and info["model"]
    cookie = headers["set-cookie"]
    assert cookie.startswith("pixdesk_session=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Path=/" in cookie and API_KEY not in cookie
    again = site.request("POST", "/auth/exchange", {"code": body["code"]}, key=False, headers=origin)
    assert (again[0], again[2]["error"]["code"]) == (401, "invalid_login_code")  # single use
    return cookie.split(";")[0]


def test_login_code_exchange_and_cookie_use(site):
    assert site.request("GET", "/auth/session", key=False)[0] == 401
    cookie = _login(site)
    own = {"Cookie": cookie, "Origin": f"http://127.0.0.1:{site.port}", "Sec-Fetch-Site": "same-origin"}
    status, _, info = site.request("GET", "/auth/session", key=False, headers=own)
    assert status == 200 and info["ok"] and API_KEY not in str(info)
    assert (
        site.request("GET", "/v1/models", key=False, headers={"Cookie": cookie})[0] == 200
    )  # no Origin: fine
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert site.request("POST", "/v1/chat/completions", body, key=False, headers=own)[0] == 200
    # the cookie cannot mint codes (only the key can), and never counts cross-origin
    assert site.request("POST", "/auth/code", {}, key=False, headers=own)[0] == 401
    before = site.counters()
    for bad in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}):
        status, headers, out = site.request(
            "POST", "/v1/chat/completions", body, key=False, headers={"Cookie": cookie, **bad}
        )
        assert (status, out["error"]["code"]) == (
            403,
            "origin_not_allowed",
        ) and "access-control-allow-origin" not in headers
    assert site.counters() == before
    status, _, out = site.request(
        "GET", "/v1/models", key=False, headers={"Cookie": "pixdesk_session=forged"}
    )
    assert (status, out["error"]["code"]) == (401, "invalid_api_key")


def test_exchange_requires_the_page_origin(site):
    code = site.request("POST", "/auth/code", {})[2]["code"]
    status, _, out = site.request("POST", "/auth/exchange", {"code": code}, key=False)
    assert (status, out["error"]["code"]) == (403, "origin_not_allowed")
    status, _, out = site.request(
        "POST", "/auth/exchange", {"code": code}, key=False, headers={"Origin": "http://evil.example"}
    )
    assert (status, out["error"]["code"]) == (403, "origin_not_allowed")
    status, _, out = site.request(
        "POST",
        "/auth/exchange",
        {"code": "guess"},
        key=False,
        headers={"Origin": f"http://localhost:{site.port}"},
    )
    assert (status, out["error"]["code"]) == (401, "invalid_login_code")


def test_codes_expire_and_sessions_too():
    now = [1000.0]
    auth = Authenticator("k" * 20, session_s=60, clock=lambda: now[0])
    code = auth.new_code()
    now[0] += CODE_TTL_S + 1
    assert auth.exchange(code) is None
    token = auth.exchange(auth.new_code())
    assert token and auth.check_session(token)
    now[0] += 61
    assert not auth.check_session(token)
    assert (
        auth.check_key(b"k" * 20) and not auth.check_key(b"k" * 19) and not auth.check_key("k\u00e9".encode())
    )


def test_html_previews_carry_their_own_sandbox_csp(site):
    doc = "<!doctype html><style>h1{color:#c00}</style><h1>Plans</h1><script>top.x=1</script>"
    status, _, body = site.request("POST", "/v1/previews", {"html": doc})
    assert status == 200 and body["url"] == f"/preview/{body['id']}"
    status, headers, page = site.request("GET", body["url"])
    assert status == 200 and page == doc.encode()
    csp = headers["content-security-policy"]
    assert csp.startswith("sandbox allow-scripts;") and "allow-same-origin" not in csp
    assert "default-src 'none'" in csp and "frame-ancestors 'self'" in csp  # no network; framed by the page
    assert headers["x-frame-options"] == "SAMEORIGIN" and headers["cache-control"] == "no-store"
    assert site.request("GET", body["url"], key=False)[0] == 401  # the session cookie or key is needed
    assert site.request("GET", "/preview/nope")[1]["content-type"].startswith("application/json")
    assert site.request("GET", "/preview/nope")[0] == 404
    assert site.request("POST", "/v1/previews", {"html": ""})[0] == 400
