"""The Starlette app factory: guards, routes, errors, and the model's life (load on start, stop on exit).

    create_app(engine_or_loader, settings, api_key) -> Starlette

`engine_or_loader` is a started Engine (tests, embedding) or a Loader `(progress) -> Engine` that runs in a
background thread once the server is up (the daemon), so /health shows progress while the model loads.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pixdesk.config import Settings, max_body_bytes
from pixdesk.errors import InternalError, MethodNotAllowed, NotFound, PixdeskError
from pixdesk.server import chat, page, previews, tasks
from pixdesk.server.auth import Authenticator
from pixdesk.server.fetch import Fetcher
from pixdesk.server.guards import AuthGuard, BodyGuard, HostGuard, OriginGuard
from pixdesk.server.loading import ModelSlot
from pixdesk.server.metrics import RequestLog, ServerMetrics, memory_in_use
from pixdesk.server.previews import PreviewStore
from pixdesk.server.responses import JSON, error_response

log = logging.getLogger("pixdesk.server")


@dataclass
class AppContext:
    settings: Settings
    slot: ModelSlot
    auth: Authenticator
    fetcher: Fetcher
    web_dir: Path
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    previews: PreviewStore = field(default_factory=PreviewStore)

    @property
    def extra_hosts(self) -> tuple[str, ...]:
        return self.settings.server.allowed_hosts


def create_app(
    engine_or_loader,
    settings: Settings,
    api_key: str,
    *,
    fetcher: Fetcher | None = None,
    web_dir: Path | None = None,
    on_ready=None,
    on_shutdown=None,
) -> Starlette:
    s = settings.server
    ctx = AppContext(
        settings=settings,
        slot=ModelSlot(engine_or_loader),
        auth=Authenticator(api_key, session_s=s.session_hours * 3600),
        fetcher=fetcher
        or Fetcher(
            enabled=settings.images.fetch_urls,
            max_bytes=settings.images.max_bytes,
            timeout_s=settings.images.fetch_timeout_s,
        ),
        web_dir=web_dir or page.WEB_DIR,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app):
        ctx.slot.start_loading()
        if on_ready:
            on_ready()
        try:
            yield
        finally:
            ctx.slot.stop()
            if on_shutdown:
                on_shutdown()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
        Route("/v1/chat/completions", chat.chat_completions, methods=["POST"]),
        Route("/v1/completions", chat.completions, methods=["POST"]),
        Route("/v1/tasks", tasks.list_tasks, methods=["GET"]),
        Route("/v1/tasks/{name}", tasks.run_task, methods=["POST"]),
        Route("/auth/code", page.login_code, methods=["POST"]),
        Route("/auth/exchange", page.exchange, methods=["POST"]),
        Route("/auth/session", page.session, methods=["GET"]),
        Route("/v1/previews", previews.create_preview, methods=["POST"]),
        Route("/preview/{key}", previews.show_preview, methods=["GET"]),
        Route("/", page.index, methods=["GET"]),
        Mount("/static", StaticFiles(directory=ctx.web_dir, check_dir=False), name="static"),
    ]
    extra = s.allowed_hosts
    middleware = [
        Middleware(RequestLog, metrics=ctx.metrics),
        Middleware(ErrorBoundary),
        Middleware(page.SecurityHeaders),
        Middleware(HostGuard, extra_hosts=extra),
        Middleware(OriginGuard, patterns=s.allowed_origins, extra_hosts=extra),
        Middleware(AuthGuard, auth=ctx.auth, extra_hosts=extra),
        Middleware(BodyGuard, max_bytes=max_body_bytes(settings), timeout_s=s.body_timeout_s),
    ]
    handlers = {PixdeskError: _pixdesk_error, HTTPException: _http_error}
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=handlers, lifespan=lifespan)
    app.state.ctx = ctx
    return app


# ------------------------------------------------------------------------------------------------ routes


async def health(request: Request) -> Response:
    """Public: loading/ready (with progress and phase while loading) and nothing else."""
    slot = request.app.state.ctx.slot
    body = {"status": slot.state}
    if slot.state == "loading":
        body["progress"] = round(slot.progress, 3)
        body["phase"] = slot.phase
    return JSON(body, status_code=200 if slot.state == "ready" else 503)


async def metrics(request: Request) -> Response:
    ctx = request.app.state.ctx
    engine = ctx.slot.engine
    stats = engine.stats() if engine is not None else None
    text = ctx.metrics.render(ctx.slot.state, ctx.slot.progress, stats, memory_in_use(engine))
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


async def models(request: Request) -> Response:
    ctx = request.app.state.ctx
    engine = await ctx.slot.get(ctx.settings.server.load_wait_s)
    return JSON({"object": "list", "data": [_model_card(engine.info, engine.info.id)]})


async def model(request: Request) -> Response:
    """Any model name is accepted (and echoed), as in chat requests."""
    ctx = request.app.state.ctx
    engine = await ctx.slot.get(ctx.settings.server.load_wait_s)
    return JSON(_model_card(engine.info, request.path_params["model"]))


def _model_card(info, model_id: str) -> dict:
    card = {
        "id": model_id,
        "object": "model",
        "created": 0,
        "owned_by": "pixdesk",
        "context_length": info.context,
        "vision": info.vision,
        "max_image_size": info.max_image_size,
        "patch_size": info.patch_size,
        "demo": info.demo,
        "dtype": info.dtype,
        "quant": info.quant,
    }
    if info.demo:
        card["notice"] = "built-in tiny demo checkpoint with random weights: its answers are random text"
    return card


# ------------------------------------------------------------------------------------------------ errors


async def _pixdesk_error(request: Request, exc: PixdeskError) -> Response:
    return error_response(exc)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 405:
        return error_response(MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}"))
    return error_response(
        NotFound(f"no route {request.url.path[:200]}; see /v1/models and /v1/chat/completions")
    )


class ErrorBoundary:
    """Anything unexpected becomes a generic 500 (or a closed stream); the log gets the type and the stack
    frames but not the exception text, which could quote request content."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        started = False

        async def tracking(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception as exc:  # noqa: BLE001 - the boundary: nothing escapes as a traceback
            frames = "".join(traceback.format_tb(exc.__traceback__))
            log.error("internal error %s in %s\n%s", type(exc).__name__, scope.get("path", "?"), frames)
            if scope["type"] == "http" and not started:
                await error_response(InternalError("internal error; see the daemon log"))(
                    scope, receive, send
                )
