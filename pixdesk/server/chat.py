"""The generation routes: /v1/chat/completions and /v1/completions. They translate, in this order:
parse + bound the JSON -> wait for the model -> images (count, fetch, decode) -> prompt -> sampling params
and constraint mask -> submit -> answer or stream. Every refusal happens before `submit`, so a refused
request moves no engine counter.
"""

from __future__ import annotations

from dataclasses import replace

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from pixdesk.engine.generate import check_context
from pixdesk.engine.sampling import SamplingParams
from pixdesk.errors import ContextLengthExceeded, ImageTokenMismatch, InvalidRequest
from pixdesk.server import structured
from pixdesk.server.answers import (
    EventStream,
    Job,
    answer_chat,
    answer_completion,
    stream_chat,
    stream_completion,
)
from pixdesk.server.images import check_count, prepare_images
from pixdesk.server.messages import ImageRef, Message
from pixdesk.server.openai import MAX_TEXT_CHARS_PER_TOKEN, ChatRequest, Common, parse_chat, parse_completion
from pixdesk.server.replies import Reply
from pixdesk.server.responses import JSON
from pixdesk.server.schema import parse_json_body
from pixdesk.tokenizer.chat import ChatMessage, ImageChunk, TextChunk, encode_completion

IMAGE_PLACEHOLDER = "[IMG]"  # /v1/completions: where each of `images` goes in the prompt


async def read_json(request: Request) -> dict:
    body = await request.body()
    if len(body) > 1 << 20:  # parsing megabytes of base64 takes a moment: keep the event loop free
        return await run_in_threadpool(parse_json_body, body)
    return parse_json_body(body)


async def chat_completions(request: Request):
    ctx = request.app.state.ctx
    req = parse_chat(await read_json(request))
    engine = await ctx.slot.get(ctx.settings.server.load_wait_s)
    check_count(req.images, ctx.settings.images)
    _check_text_size([p for m in req.messages for p in m.parts if isinstance(p, str)], engine, "messages")
    images = await prepare_images(req.images, engine, ctx.fetcher, ctx.settings.images)
    tools = structured.parse_tools(req.tools)
    messages = _chat_messages(req, images)
    prompt = await run_in_threadpool(engine.encode_chat, messages, tools)
    params = finalize(req, len(prompt.ids), engine, ctx.settings.server.default_max_tokens)
    mask, parse_calls, call_token = await run_in_threadpool(structured.build_mask, engine, req, tools, params)
    return _submit(request, req, engine, prompt, params, mask, "chat", parse_calls, call_token)


async def completions(request: Request):
    ctx = request.app.state.ctx
    req = parse_completion(await read_json(request))
    engine = await ctx.slot.get(ctx.settings.server.load_wait_s)
    check_count(req.images, ctx.settings.images, "images")
    _check_text_size([req.prompt], engine, "prompt")
    pieces = req.prompt.split(IMAGE_PLACEHOLDER) if req.images else [req.prompt]
    if len(pieces) - 1 != len(req.images):
        raise ImageTokenMismatch(
            f"the prompt has {len(pieces) - 1} {IMAGE_PLACEHOLDER} placeholders but {len(req.images)} images "
            "were sent; put one placeholder where each image goes",
            param="prompt",
        )
    images = await prepare_images(req.images, engine, ctx.fetcher, ctx.settings.images, "images")
    chunks: list = [TextChunk(pieces[0])]
    for img, text in zip(images, pieces[1:]):
        chunks += [ImageChunk(img), TextChunk(text)]
    prompt = await run_in_threadpool(encode_completion, engine.tokenizer, chunks)
    params = finalize(req, len(prompt.ids), engine, ctx.settings.server.default_max_tokens)
    return _submit(request, req, engine, prompt, params, None, "completion")


def _submit(request, req: Common, engine, prompt, params, mask, kind: str, parse_calls=None, call_token=None):
    ctx = request.app.state.ctx
    principal = request.scope.get("pixdesk.principal") or "anonymous"
    client = f"{principal}:{req.user}" if req.user else principal
    sub = engine.submit(prompt, params, priority=req.priority, client_id=client, mask=mask)
    tok = getattr(engine, "tokenizer", None)
    job = Job(
        submission=sub,
        reply=Reply(kind, req.model or engine.info.id, fingerprint(engine)),
        logprobs=params.logprobs,
        include_usage=req.include_usage,
        t0=request.scope.get("pixdesk.t0", 0.0),
        metrics=ctx.metrics,
        id_to_bytes=getattr(tok, "id_to_bytes", None),
        tool_calls_token=call_token,
        parse_calls=parse_calls,
    )
    if req.stream:
        return EventStream((stream_chat if kind == "chat" else stream_completion)(job), sub)
    return _Deferred(job, answer_chat if kind == "chat" else answer_completion)


class _Deferred:
    """A non-streamed answer: collected inside the ASGI call, so the client's disconnect is visible."""

    def __init__(self, job: Job, answer):
        self.job, self.answer = job, answer

    async def __call__(self, scope, receive, send) -> None:
        await JSON(await self.answer(self.job, receive))(scope, receive, send)


def fingerprint(engine) -> str:
    return "pixdesk-" + engine.info.manifest_id[:12]


def finalize(req: Common, n_prompt: int, engine, default_max_tokens: int) -> SamplingParams:
    """Fill max_tokens (default: what the context has left, capped) and range-check every value (row 12)."""
    context = engine.info.context
    max_tokens = req.max_tokens
    if max_tokens is None:
        max_tokens = min(default_max_tokens, context - n_prompt)
        if max_tokens < 1:
            check_context(n_prompt, 1, context)
    params = replace(req.params, max_tokens=max_tokens).validate(engine.info.vocab_size, context)
    check_context(n_prompt, params.max_tokens, context)
    return params


def _check_text_size(texts: list[str], engine, param: str) -> None:
    n = sum(len(t) for t in texts)
    limit = engine.info.context * MAX_TEXT_CHARS_PER_TOKEN
    if n > limit:
        raise ContextLengthExceeded(
            f"the prompt text has {n} characters, more than the context of {engine.info.context} tokens can "
            f"hold (at most {limit} characters are even tokenized); shorten it",
            param=param,
        )


def _chat_messages(req: ChatRequest, images: list) -> list:
    """Parsed messages -> tokenizer messages; image refs replaced by their prepared images, in order."""
    it = iter(images)
    out = []
    for i, m in enumerate(req.messages):
        if m.role == "tool" or m.tool_calls:
            out.append(_tool_message(m, i))
            continue
        if m.plain:
            content = m.parts[0] if m.parts else ""
        else:  # chat.py joins adjacent text parts the way mistral_common does
            content = [ImageChunk(next(it)) if isinstance(p, ImageRef) else TextChunk(p) for p in m.parts]
        out.append(ChatMessage(m.role, content, prefix=m.prefix))
    return out


def _tool_message(m: Message, i: int):
    from pixdesk.tokenizer.tools import AssistantToolCalls, ToolCall, ToolResult

    if m.role == "tool":
        return ToolResult(m.tool_call_id, "".join(p for p in m.parts if isinstance(p, str)), m.name)
    if any(p for p in m.parts):
        raise InvalidRequest(
            f"messages[{i}]: an assistant message with tool_calls must have no content text",
            param=f"messages[{i}].content",
        )
    return AssistantToolCalls([ToolCall(c["id"], c["name"], c["arguments"]) for c in m.tool_calls])
