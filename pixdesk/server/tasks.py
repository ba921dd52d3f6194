"""/v1/tasks: the task registry (pixdesk/tasks) over HTTP.

    GET  /v1/tasks         -> {"object": "list", "data": [{"name", "description", "schema"}]}
    POST /v1/tasks/{name}  {"images": [data: URI | http(s) URL, ...], "options": {...}, "stream": bool,
                            "stream_options": {"include_usage": bool}, "model": str}
      -> {"id", "object": "task.result", "created", "model", "task", "text", "data", "rendered", "warnings",
          "finish_reason", "usage"}
      stream: `data: {"id", "object": "task.chunk", "task", "delta": "..."}` per piece of text, then one
      `task.result` chunk, then `data: [DONE]`; errors as in chat (an `{"error": {...}}` chunk, then [DONE]).
Images go through the same count, fetch and decode path as chat; `options.client_id` is not accepted here
(the caller is identified by its key or session).
"""

from __future__ import annotations

import secrets

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from pixdesk.engine.events import Delta
from pixdesk.errors import InvalidRequest, NotFound, PixdeskError
from pixdesk.server.answers import EventStream, Job, until_disconnect
from pixdesk.server.chat import fingerprint, read_json
from pixdesk.server.images import check_count, prepare_images
from pixdesk.server.messages import image_ref
from pixdesk.server.replies import DONE, Reply, sse, usage_dict
from pixdesk.server.responses import JSON, error_response
from pixdesk.server.schema import Fields

FIELDS = {"images", "options", "stream", "stream_options", "model"}


def _registry():
    from pixdesk.tasks import registry

    return registry


async def list_tasks(request: Request):
    return JSON({"object": "list", "data": [t.info() for t in _registry().values()]})


async def run_task(request: Request):
    from pixdesk.tasks import TaskOptions, TaskRun

    ctx = request.app.state.ctx
    name = request.path_params["name"]
    task = _registry().get(name)
    if task is None:
        raise NotFound(f"no task named {name[:60]!r}; the tasks are {', '.join(_registry())}")
    f = Fields(await read_json(request), "", FIELDS)
    raw_images = f.list("images", max_items=4096) or []
    refs = [image_ref(u, f"images[{i}]") for i, u in enumerate(raw_images)]
    raw_options = f.raw("options", {})
    if not isinstance(raw_options, dict):
        raise InvalidRequest("options must be an object", param="options")
    if "client_id" in raw_options:
        raise InvalidRequest("options.client_id is set by the server over HTTP", param="options.client_id")
    include_usage = Fields(f.raw("stream_options", {}), "stream_options", {"include_usage"}).bool(
        "include_usage"
    )
    principal = request.scope.get("pixdesk.principal") or "anonymous"
    opts = TaskOptions.from_dict({**raw_options, "client_id": principal})
    engine = await ctx.slot.get(ctx.settings.server.load_wait_s)
    check_count(refs, ctx.settings.images, "images")
    images = await prepare_images(refs, engine, ctx.fetcher, ctx.settings.images, "images")
    messages = task.build_messages(images, opts)
    prompt = await run_in_threadpool(engine.encode_chat, messages)
    params = task.default_params(opts).validate(engine.info.vocab_size, engine.info.context)
    mask = None
    factory = getattr(engine, "grammar", None)  # engines without one get the answer post-processed as text
    if task.schema is not None and factory is not None:
        mask = await run_in_threadpool(
            factory.json_schema, task.schema, params.max_tokens, param=f"task {name}"
        )
    sub = engine.submit(prompt, params, priority=opts.priority, client_id=opts.client_id, mask=mask)
    run = TaskRun(task, opts, sub, mask)
    reply = Reply(
        "task", f.str("model") or engine.info.id, fingerprint(engine), id="task-" + secrets.token_hex(12)
    )
    job = Job(sub, reply, False, include_usage, request.scope.get("pixdesk.t0", 0.0), ctx.metrics)
    if f.bool("stream"):
        return EventStream(_stream(job, run), sub)
    return _Whole(job, run)


def _result(job: Job, run, text: str) -> dict:
    finish = job.check_finish()  # a failed or cancelled generation raises its typed error
    result = run.result(text, finish).to_dict()
    result["usage"] = usage_dict(finish.usage)
    r = job.reply
    return {"id": r.id, "object": "task.result", "created": r.created, "model": r.model, **result}


class _Whole:
    def __init__(self, job: Job, run):
        self.job, self.run = job, run

    async def __call__(self, scope, receive, send) -> None:
        parts: list[str] = []

        async def collect() -> None:
            async for d in self.job.events():
                parts.append(d.text)

        if await until_disconnect(collect(), receive, self.job.submission):
            return
        try:
            response = JSON(_result(self.job, self.run, "".join(parts)))
        except PixdeskError as exc:
            response = error_response(exc)
        await response(scope, receive, send)


async def _stream(job: Job, run):
    parts: list[str] = []
    head = {"id": job.reply.id, "object": "task.chunk", "created": job.reply.created, "task": run.task.name}
    try:
        async for d in job.events():
            if isinstance(d, Delta) and d.text:
                parts.append(d.text)
                yield sse({**head, "delta": d.text})
        yield sse(_result(job, run, "".join(parts)))
    except PixdeskError as exc:
        yield sse(exc.to_dict())
    yield DONE
