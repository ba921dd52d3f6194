"""OpenAI request schemas: JSON -> typed ChatRequest / CompletionRequest, parsed and bounded once.

Every documented OpenAI field is accepted: implemented, or ignored where it cannot change the output
(IGNORED_*). Names OpenAI does not document, and values pixdesk cannot honour (`n` > 1, audio output), are
refused with a 400 that names the field. pixdesk's own extensions: `priority` ("interactive" | "batch"),
`top_k`, `prefix` on a final assistant message (Mistral), and for /v1/completions `images`.
Messages and their content parts are parsed in messages.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pixdesk.engine.sampling import SamplingParams
from pixdesk.engine.sequence import PRIORITIES
from pixdesk.errors import InvalidRequest
from pixdesk.server.messages import ImageRef, Message, image_ref, parse_message
from pixdesk.server.schema import Fields

SAMPLING = {
    "frequency_penalty",
    "logit_bias",
    "max_tokens",
    "presence_penalty",
    "seed",
    "stop",
    "temperature",
    "top_p",
    "top_k",
}
IGNORED_CHAT = (
    "metadata",
    "store",
    "service_tier",
    "prediction",
    "reasoning_effort",
    "verbosity",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "parallel_tool_calls",
)
CHAT_FIELDS = frozenset(
    {
        *SAMPLING,
        *IGNORED_CHAT,
        "messages",
        "model",
        "n",
        "logprobs",
        "top_logprobs",
        "max_completion_tokens",
        "response_format",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "user",
        "modalities",
        "audio",
        "web_search_options",
        "priority",
    }
)
COMPLETION_FIELDS = frozenset(
    {
        *SAMPLING,
        "model",
        "prompt",
        "n",
        "best_of",
        "echo",
        "logprobs",
        "stream",
        "stream_options",
        "suffix",
        "user",
        "images",
        "priority",
    }
)
MAX_MESSAGES = 2048
MAX_TEXT_CHARS_PER_TOKEN = 32  # a prompt with more characters than context * this cannot fit: refuse early


@dataclass
class Common:
    model: str
    params: SamplingParams  # max_tokens filled once the prompt length is known
    max_tokens: int | None
    stream: bool
    include_usage: bool
    priority: str
    user: str | None


@dataclass
class ChatRequest(Common):
    messages: list[Message] = field(default_factory=list)
    response_format: dict | None = None
    tools: list | None = None
    tool_choice: object = None
    parallel_tool_calls: bool = True

    @property
    def images(self) -> list[ImageRef]:
        return [p for m in self.messages for p in m.parts if isinstance(p, ImageRef)]


@dataclass
class CompletionRequest(Common):
    prompt: str = ""
    images: list[ImageRef] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ chat


def parse_chat(body: dict) -> ChatRequest:
    f = Fields(body, "", CHAT_FIELDS)
    f.ignored(*IGNORED_CHAT)
    f.unsupported("audio", "audio output is not supported (pixdesk answers in text)")
    f.unsupported("web_search_options", "web search is not supported")
    modalities = f.list("modalities", max_items=4)
    if modalities not in (None, ["text"]):
        raise InvalidRequest('modalities: only ["text"] is supported', param="modalities")
    tools, tool_choice = _tools(f)
    raw = f.list("messages", max_items=MAX_MESSAGES)
    if not raw:
        raise InvalidRequest("messages must be a non-empty array", param="messages")
    messages = [parse_message(m, f"messages[{i}]") for i, m in enumerate(raw)]
    logprobs = f.bool("logprobs")
    top = f.int("top_logprobs", 0)
    if top and not logprobs:
        raise InvalidRequest("top_logprobs requires logprobs: true", param="top_logprobs")
    max_tokens = f.int("max_completion_tokens")
    if max_tokens is None:
        max_tokens = f.int("max_tokens")
    rf = f.raw("response_format")
    if rf is not None and not isinstance(rf, dict):
        raise InvalidRequest("response_format must be an object with a 'type'", param="response_format")
    return ChatRequest(
        **_common(f, max_tokens, logprobs=logprobs, top_logprobs=top),
        messages=messages,
        response_format=rf,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=f.bool("parallel_tool_calls", True),
    )


def _tools(f: Fields) -> tuple[list | None, object]:
    tools, choice = f.raw("tools"), f.raw("tool_choice")
    functions, function_call = f.raw("functions"), f.raw("function_call")
    if functions is not None:  # deprecated spelling of tools
        if tools is not None:
            raise InvalidRequest("give either tools or the deprecated functions, not both", param="functions")
        if not isinstance(functions, list):
            raise InvalidRequest("functions must be an array", param="functions")
        tools = [{"type": "function", "function": fn} for fn in functions]
    if function_call is not None:
        if choice is not None:
            raise InvalidRequest(
                "give either tool_choice or the deprecated function_call", param="function_call"
            )
        choice = (
            function_call
            if isinstance(function_call, str)
            else {"type": "function", "function": function_call}
        )
    if choice is not None and tools is None and choice != "none":
        raise InvalidRequest("tool_choice needs tools", param="tool_choice")
    return tools, choice


# ------------------------------------------------------------------------------------------------ completions


def parse_completion(body: dict) -> CompletionRequest:
    f = Fields(body, "", COMPLETION_FIELDS)
    f.unsupported("suffix", "suffix (insertion) is not supported")
    f.unsupported("echo", "echo is not supported", allowed=(None, False))
    f.unsupported("best_of", "best_of must be 1", allowed=(None, 1))
    prompt = f.raw("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InvalidRequest(
            "prompt must be a string (token-id and multi-prompt batches are not supported)", param="prompt"
        )
    lp = f.int("logprobs")
    if lp is not None and not 0 <= lp <= 5:
        raise InvalidRequest(f"logprobs must be an integer in [0, 5], got {lp}", param="logprobs")
    images = f.list("images", max_items=4096) or []
    refs = [image_ref(u, f"images[{i}]") for i, u in enumerate(images)]
    return CompletionRequest(
        **_common(f, f.int("max_tokens", 16), logprobs=lp is not None, top_logprobs=lp or 0),
        prompt=prompt,
        images=refs,
    )


# ------------------------------------------------------------------------------------------------ shared


def _common(f: Fields, max_tokens: int | None, *, logprobs: bool, top_logprobs: int) -> dict:
    n = f.int("n", 1)
    if n != 1:
        raise InvalidRequest(f"n must be 1 (pixdesk returns one choice), got {n}", param="n")
    if max_tokens is not None and max_tokens < 1:
        raise InvalidRequest(
            f"max_tokens must be an integer of at least 1, got {max_tokens}", param="max_tokens"
        )
    stream = f.bool("stream")
    include_usage = False
    if f.has("stream_options"):
        so = Fields(f.raw("stream_options"), "stream_options", {"include_usage", "include_obfuscation"})
        include_usage = so.bool("include_usage")
        so.bool("include_obfuscation")
    params = SamplingParams(
        temperature=_default(f.float("temperature"), 1.0),
        top_p=_default(f.float("top_p"), 1.0),
        top_k=_default(f.int("top_k"), 0),
        seed=f.int("seed"),
        stop=_stop(f),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        frequency_penalty=_default(f.float("frequency_penalty"), 0.0),
        presence_penalty=_default(f.float("presence_penalty"), 0.0),
        logit_bias=_logit_bias(f),
    )
    return {
        "model": f.str("model", "") or "",
        "params": params,
        "max_tokens": max_tokens,
        "stream": stream,
        "include_usage": include_usage,
        "priority": f.choice("priority", PRIORITIES, "interactive"),
        "user": f.str("user"),
    }


def _default(value, default):
    return default if value is None else value


def _stop(f: Fields) -> tuple[str, ...]:
    stop = f.raw("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise InvalidRequest("stop must be a string or an array of strings", param="stop")
    return tuple(stop)


def _logit_bias(f: Fields) -> dict[int, float]:
    raw = f.raw("logit_bias")
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > 1024:
        raise InvalidRequest("logit_bias must be an object of at most 1024 token ids", param="logit_bias")
    out = {}
    for key, value in raw.items():
        if not re.fullmatch(r"-?[0-9]{1,12}", key):
            raise InvalidRequest(f"logit_bias keys must be token ids, got {key[:20]!r}", param="logit_bias")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidRequest(f"logit_bias[{key}] must be a number", param="logit_bias")
        out[int(key)] = float(value)
    return out
