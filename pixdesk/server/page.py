"""The built-in chat page (static files from pixdesk/server/web/), its login routes and security headers.

Login contract (the page codes against it):
- `POST /auth/code` with the bearer key -> {"code", "expires_in", "url"}; `pixdesk open` calls it and opens
  `http://127.0.0.1:PORT/#code=CODE` (the fragment never reaches a server or a Referer).
- `POST /auth/exchange` {"code": "..."} from the page (Origin must be this server's own origin) ->
  200 {"ok": true, ...} + `Set-Cookie: pixdesk_session=...; HttpOnly; SameSite=Strict; Path=/`;
  401 invalid_login_code for an unknown, used or expired code.
- `GET /auth/session` -> 200 {"ok": true, "model", "demo", "loading", "progress", "phase"} with a valid cookie
  (or key), 401 invalid_api_key otherwise.
API routes then accept the cookie as they accept the key (same-origin or no Origin only).
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from pixdesk.errors import InvalidApiKey, InvalidLoginCode, InvalidRequest, OriginNotAllowed
from pixdesk.server.auth import CODE_TTL_S, session_cookie
from pixdesk.server.chat import read_json
from pixdesk.server.guards import header, local_port, own_origins
from pixdesk.server.responses import JSON
from pixdesk.server.schema import Fields

WEB_DIR = Path(__file__).parent / "web"
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; frame-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; "
    "frame-ancestors 'none'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
PLACEHOLDER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pixdesk</title></head>
<body><h1>pixdesk</h1><p>The daemon is running. The chat page is not installed in this build;
use the OpenAI-compatible API at <code>/v1</code>.</p></body></html>
"""


async def index(request: Request) -> Response:
    page = request.app.state.ctx.web_dir / "index.html"
    if page.is_file():
        return HTMLResponse(page.read_bytes())
    return HTMLResponse(PLACEHOLDER)


async def login_code(request: Request) -> Response:
    if request.scope.get("pixdesk.principal") != "key":
        raise InvalidApiKey("login codes are issued only to callers with the API key (pixdesk open)")
    ctx = request.app.state.ctx
    code = ctx.auth.new_code()
    url = f"http://127.0.0.1:{local_port(request.scope)}/#code={code}"
    return JSON({"code": code, "expires_in": int(CODE_TTL_S), "url": url})


async def exchange(request: Request) -> Response:
    ctx = request.app.state.ctx
    origins = header(request.scope, b"origin")
    if len(origins) != 1 or origins[0].decode("latin-1") not in own_origins(request.scope, ctx.extra_hosts):
        raise OriginNotAllowed("/auth/exchange is called by the chat page itself (its own origin) only")
    f = Fields(await read_json(request), "", {"code"})
    code = f.str("code", max_len=200)
    if not code:
        raise InvalidRequest('send {"code": "..."} from the URL that `pixdesk open` opened', param="code")
    token = ctx.auth.exchange(code)
    if token is None:
        raise InvalidLoginCode("the login code is unknown, already used or expired; run `pixdesk open` again")
    response = JSON(session_info(ctx))
    response.headers["Set-Cookie"] = session_cookie(token)
    return response


async def session(request: Request) -> Response:
    if request.scope.get("pixdesk.principal") is None:
        raise InvalidApiKey("not logged in; run `pixdesk open` to open the page with a login code")
    return JSON(session_info(request.app.state.ctx))


def session_info(ctx) -> dict:
    engine = ctx.slot.engine
    info = getattr(engine, "info", None)
    return {
        "ok": True,
        "model": info.id if info else None,
        "demo": ctx.slot.demo,
        "loading": ctx.slot.state == "loading",
        "progress": ctx.slot.progress,
        "phase": ctx.slot.phase,
    }


class SecurityHeaders:
    """nosniff and no-referrer everywhere; the strict page CSP on / and /static, a deny-all CSP elsewhere."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        is_page = scope["path"] == "/" or scope["path"].startswith("/static/")
        extra = [
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
            (b"content-security-policy", (PAGE_CSP if is_page else API_CSP).encode()),
            (b"cross-origin-resource-policy", b"same-origin"),
        ]
        if not is_page:
            extra.append((b"cache-control", b"no-store"))

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message = {
                    **message,
                    "headers": [*message.get("headers", []), *((k, v) for k, v in extra if k not in names)],
                }
            await send(message)

        await self.app(scope, receive, with_headers)
