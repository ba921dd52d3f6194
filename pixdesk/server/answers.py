"""A submitted generation -> an HTTP answer: one JSON body, or SSE chunks ending in `[DONE]`.

The client leaving cancels the generation (SECURITY.md row 26): streams watch `receive()` for
http.disconnect next to the event pump, non-streamed answers do the same while they collect.
Errors after the first byte of a stream arrive as an `{"error": {...}}` chunk, then `[DONE]`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from pixdesk.engine.events import Delta, Finish, Usage
from pixdesk.engine.sequence import Submission
from pixdesk.errors import Cancelled, InternalError, PixdeskError, ShuttingDown
from pixdesk.server.metrics import ServerMetrics
from pixdesk.server.replies import DONE, Logprobs, Reply, sse


@dataclass
class Job:
    """Everything an answer needs besides the events."""

    submission: Submission
    reply: Reply
    logprobs: bool
    include_usage: bool
    t0: float  # request arrival (perf_counter), for time to first token
    metrics: ServerMetrics
    id_to_bytes: Callable[[int], bytes] | None = None
    tool_calls_token: int | None = None  # set when tools are offered: this token starts a call
    parse_calls: Callable[[str], list[dict]] | None = None
    finished: Finish | None = field(default=None, init=False)

    async def events(self) -> AsyncIterator[Delta]:
        first = True
        try:
            async for event in self.submission:
                if isinstance(event, Finish):
                    self.finished = event
                    self.metrics.record_finish(event)
                    return
                if first:
                    first = False
                    self.metrics.record_ttft(time.perf_counter() - self.t0)
                yield event
        finally:
            if self.finished is None:
                self.submission.cancel()

    def check_finish(self) -> Finish:
        f = self.finished
        if f is None or f.reason == "cancelled":
            raise ShuttingDown(
                "the request was cancelled because the daemon is stopping; retry after it restarts"
            )
        if f.reason == "error":
            raise (
                f.error
                if isinstance(f.error, PixdeskError)
                else InternalError("internal error while generating")
            )
        return f

    def is_call(self, delta: Delta) -> bool:
        return self.tool_calls_token is not None and self.tool_calls_token in delta.token_ids


# -------------------------------------------------------------------------------------------- whole answers


async def collect(job: Job, receive) -> tuple[str, Finish, Logprobs, bool]:
    """Run to the end (cancelling if the client leaves); returns text, finish, logprobs, called-a-tool."""
    parts, lp, called = [], Logprobs(job.id_to_bytes), False

    async def run() -> None:
        nonlocal called
        async for d in job.events():
            called = called or job.is_call(d)
            parts.append(d.text)
            lp.add(d.logprobs)

    if await until_disconnect(run(), receive, job.submission):
        raise Cancelled("the client disconnected; the generation was cancelled")
    return "".join(parts), job.check_finish(), lp, called


async def answer_chat(job: Job, receive) -> dict:
    text, finish, lp, called = await collect(job, receive)
    logprobs = lp.chat() if job.logprobs else None
    if called and job.parse_calls:
        return job.reply.chat(None, "tool_calls", finish.usage, logprobs, job.parse_calls(text))
    return job.reply.chat(text, finish.reason, finish.usage, logprobs)


async def answer_completion(job: Job, receive) -> dict:
    text, finish, lp, _ = await collect(job, receive)
    return job.reply.completion(text, finish.reason, finish.usage, lp.completion() if job.logprobs else None)


# ------------------------------------------------------------------------------------------------ streams


async def stream_chat(job: Job) -> AsyncIterator[bytes]:
    r, lp = job.reply, Logprobs(job.id_to_bytes)
    yield sse(r.chunk({"role": "assistant", "content": ""}, include_usage=job.include_usage))
    held: list[str] | None = None  # a tool call's JSON is held back and sent whole, parsed
    try:
        async for d in job.events():
            if held is not None or job.is_call(d):
                held = [*(held or []), d.text]
                continue
            if d.text or d.logprobs:
                logprobs = lp.chat(d.logprobs) if job.logprobs else None
                yield sse(r.chunk({"content": d.text}, logprobs=logprobs, include_usage=job.include_usage))
        finish = job.check_finish()
        reason = finish.reason
        if held is not None and job.parse_calls:
            calls = [{"index": i, **c} for i, c in enumerate(job.parse_calls("".join(held)))]
            yield sse(r.chunk({"tool_calls": calls}, include_usage=job.include_usage))
            reason = "tool_calls"
    except PixdeskError as exc:
        yield sse(exc.to_dict())
        yield DONE
        return
    yield sse(r.chunk({}, finish=reason, include_usage=job.include_usage))
    yield from_usage(job, finish.usage)
    yield DONE


async def stream_completion(job: Job) -> AsyncIterator[bytes]:
    r, lp, offset = job.reply, Logprobs(job.id_to_bytes), 0
    try:
        async for d in job.events():
            logprobs = lp.completion(d.logprobs or [], offset) if job.logprobs else None
            offset += sum(len(e.text) for e in d.logprobs or [])
            yield sse(r.chunk(d.text, logprobs=logprobs, include_usage=job.include_usage))
        finish = job.check_finish()
    except PixdeskError as exc:
        yield sse(exc.to_dict())
        yield DONE
        return
    yield sse(r.chunk("", finish=finish.reason, include_usage=job.include_usage))
    yield from_usage(job, finish.usage)
    yield DONE


def from_usage(job: Job, usage: Usage) -> bytes:
    return sse(job.reply.usage_chunk(usage)) if job.include_usage else b""


class EventStream:
    """ASGI response for SSE: pumps chunks while watching for the client to leave (then cancels)."""

    def __init__(self, chunks: AsyncIterator[bytes], submission: Submission):
        self.chunks, self.submission = chunks, submission

    async def __call__(self, scope, receive, send) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

        async def pump() -> None:
            async for data in self.chunks:
                if data:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        await until_disconnect(pump(), receive, self.submission)


async def until_disconnect(work, receive, submission: Submission) -> bool:
    """Await `work`; if the client disconnects first, cancel the generation and the work (returns True)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone = not task.done()
        if gone:
            submission.cancel()
            task.cancel()
        watcher.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
    if not task.cancelled() and task.exception() is not None:
        raise task.exception()
    return gone


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
