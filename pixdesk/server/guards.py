"""ASGI middleware in front of every route: Host allow-list, Origin policy, API key or session, body cap.

Order (outermost first): HostGuard -> OriginGuard -> AuthGuard -> BodyGuard -> router. A request a guard
refuses never reaches a handler, so nothing is generated, fetched or decoded for it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qsl

from pixdesk.errors import (
    HostNotAllowed,
    InvalidApiKey,
    OriginNotAllowed,
    PixdeskError,
    RequestTimeout,
    RequestTooLarge,
    UnsupportedMediaType,
)
from pixdesk.server.auth import SESSION_COOKIE, Authenticator
from pixdesk.server.responses import error_response

ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
PUBLIC_PATHS = frozenset({"/health", "/", "/favicon.ico", "/auth/exchange", "/auth/session"})
PUBLIC_PREFIXES = ("/static/",)
KEY_PARAMS = frozenset(
    {"api_key", "apikey", "api-key", "key", "token", "access_token", "auth", "authorization"}
)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def header(scope: dict, name: bytes) -> list[bytes]:
    return [v for k, v in scope["headers"] if k == name]


def local_port(scope: dict) -> int | None:
    server = scope.get("server")
    return server[1] if server else None


def own_origins(scope: dict, extra_hosts: tuple[str, ...] = ()) -> set[str]:
    port = local_port(scope)
    return {f"http://{name}:{port}" for name in (*LOOPBACK_NAMES, *extra_hosts)}


async def refuse(scope, receive, send, exc: PixdeskError) -> None:
    """Answer with the error; close the connection when a request body may still be on its way."""
    lengths = header(scope, b"content-length")
    body_pending = any(v.strip() != b"0" for v in lengths) or header(scope, b"transfer-encoding")
    await error_response(exc, close=bool(body_pending))(scope, receive, send)


class HostGuard:
    """Row 1-2: the Host header must name this listener on loopback (or a configured extra name)."""

    def __init__(self, app: ASGIApp, extra_hosts: tuple[str, ...] = ()):
        self.app = app
        self.names = frozenset((*LOOPBACK_NAMES, *(h.lower() for h in extra_hosts)))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and not self.allowed(scope):
            return await refuse(
                scope,
                receive,
                send,
                HostNotAllowed(
                    "the Host header does not name this server; pixdesk answers only requests to "
                    "127.0.0.1, localhost or [::1] on its own port (server.allowed_hosts adds names)"
                ),
            )
        await self.app(scope, receive, send)

    def allowed(self, scope: dict) -> bool:
        hosts = header(scope, b"host")
        if len(hosts) != 1 or len(hosts[0]) > 300:
            return False
        try:
            value = hosts[0].decode("ascii").lower()
        except UnicodeDecodeError:
            return False
        m = re.fullmatch(r"(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::([0-9]{1,5}))?", value)
        if not m:
            return False
        name, port = m.group(1), m.group(2)
        want = local_port(scope)
        port_ok = int(port) == want if port is not None else want == 80
        return port_ok and name in self.names


class OriginGuard:
    """Rows 3-4: browsers may call only from this server's own origin or a configured pattern (full match).

    Requests without Origin (curl, SDKs, editors) pass. `Sec-Fetch-Site: cross-site|same-site` without an
    allowed Origin is refused too, which covers no-cors subresource requests (img, script) that send no
    Origin. Configured origins get CORS headers (exact echo) and preflight answers; nothing else does.
    """

    def __init__(self, app: ASGIApp, patterns: tuple[str, ...] = (), extra_hosts: tuple[str, ...] = ()):
        self.app = app
        self.patterns = [re.compile(p) for p in patterns]
        self.extra_hosts = extra_hosts

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        origins = header(scope, b"origin")
        fetch_site = b"".join(header(scope, b"sec-fetch-site")).lower()
        if not origins:
            if fetch_site in (b"cross-site", b"same-site"):
                return await refuse(scope, receive, send, self._refusal())
            return await self.app(scope, receive, send)
        origin = origins[0].decode("latin-1")
        if len(origins) > 1 or len(origin) > 300:
            return await refuse(scope, receive, send, self._refusal())
        if origin in own_origins(scope, self.extra_hosts) and fetch_site in (b"", b"same-origin", b"none"):
            return await self.app(scope, receive, send)
        if not any(p.fullmatch(origin) for p in self.patterns):
            return await refuse(scope, receive, send, self._refusal())
        if scope["method"] == "OPTIONS" and header(scope, b"access-control-request-method"):
            return await _preflight(origin, send)
        await self.app(scope, receive, _with_cors(send, origin))

    @staticmethod
    def _refusal() -> OriginNotAllowed:
        return OriginNotAllowed(
            "cross-origin requests are refused; open the built-in page with `pixdesk open`, or add the "
            "origin to server.allowed_origins"
        )


async def _preflight(origin: str, send) -> None:
    headers = [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
        (b"access-control-allow-headers", b"authorization, content-type"),
        (b"access-control-max-age", b"600"),
        (b"vary", b"Origin"),
        (b"content-length", b"0"),
    ]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def _with_cors(send, origin: str):
    async def wrapped(message) -> None:
        if message["type"] == "http.response.start":
            extra = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return wrapped


class AuthGuard:
    """Row 6: the bearer key (hmac.compare_digest) or a session cookie; sets scope["pixdesk.principal"]."""

    def __init__(self, app: ASGIApp, auth: Authenticator, extra_hosts: tuple[str, ...] = ()):
        self.app, self.auth, self.extra_hosts = app, auth, extra_hosts

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if _key_in_query(scope["query_string"]):
            return await refuse(
                scope,
                receive,
                send,
                InvalidApiKey(
                    "an API key in the URL is refused (URLs end up in logs and history); send it in the "
                    "Authorization header as 'Bearer <key>'"
                ),
            )
        principal = self.principal(scope)
        scope["pixdesk.principal"] = principal
        path = scope["path"]
        if principal is None and path not in PUBLIC_PATHS and not path.startswith(PUBLIC_PREFIXES):
            return await refuse(
                scope,
                receive,
                send,
                InvalidApiKey(
                    "missing or invalid API key; send 'Authorization: Bearer <key>' "
                    "(`pixdesk token` prints it)"
                ),
            )
        await self.app(scope, receive, send)

    def principal(self, scope: dict) -> str | None:
        values = header(scope, b"authorization")
        if values:
            scheme, _, key = values[0].partition(b" ")
            if len(values) == 1 and scheme.lower() == b"bearer" and self.auth.check_key(key.strip()):
                return "key"
            return None  # a wrong key is not rescued by a cookie
        origins = header(scope, b"origin")
        if origins and origins[0].decode("latin-1") not in own_origins(scope, self.extra_hosts):
            return None  # cookies count only same-origin (or without Origin)
        token = session_token(scope)
        return "session" if token and self.auth.check_session(token) else None


def session_token(scope: dict) -> str | None:
    for raw in header(scope, b"cookie"):
        try:
            jar = SimpleCookie(raw.decode("latin-1"))
        except CookieError:
            continue
        if SESSION_COOKIE in jar:
            return jar[SESSION_COOKIE].value
    return None


def _key_in_query(query: bytes) -> bool:
    if not query:
        return False
    return any(k.lower() in KEY_PARAMS for k, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True))


class BodyGuard:
    """Rows 5, 9: JSON bodies only, capped without buffering past the cap, with a deadline between chunks.

    Content-Length over the cap -> 413 before reading; a chunked body that crosses the cap -> 413 as soon as
    it does; a body that stops arriving (e.g. a Content-Length larger than what is sent) -> 408. All three
    close the connection. The accepted body is replayed to the route, then `receive` is handed through so
    routes still see the client disconnect.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = header(scope, b"content-length")
        if declared and declared[0].isdigit() and int(declared[0]) > self.max_bytes:
            return await refuse(scope, receive, send, self._too_large())
        if scope["method"] not in BODY_METHODS:
            return await self.app(scope, receive, send)
        ctype = b"".join(header(scope, b"content-type")).split(b";")[0].strip().lower()
        if ctype != b"application/json":
            return await refuse(
                scope,
                receive,
                send,
                UnsupportedMediaType("send the request body as JSON with 'Content-Type: application/json'"),
            )
        try:
            body = await self._read(receive)
        except PixdeskError as exc:
            return await refuse(scope, receive, send, exc)
        if body is None:  # the client went away
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except asyncio.TimeoutError:
                raise RequestTimeout(
                    f"the request body stopped arriving for {self.timeout_s:g} s (server.body_timeout_s); "
                    "check that Content-Length matches the body"
                ) from None
            if message["type"] == "http.disconnect":
                return None
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                raise self._too_large()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self) -> RequestTooLarge:
        return RequestTooLarge(
            f"the request body is larger than {self.max_bytes} bytes, the cap derived from images.max_images "
            "x images.max_bytes (set server.max_body_bytes to change it)"
        )


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
