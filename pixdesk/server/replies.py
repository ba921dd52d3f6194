"""OpenAI response shapes: chat completions, text completions, their SSE chunks, usage and logprobs."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from pixdesk.engine.events import TokenLogprob, Usage
from pixdesk.server.responses import dumps

DONE = b"data: [DONE]\n\n"


def sse(obj) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


def usage_dict(u: Usage) -> dict:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }


@dataclass
class Reply:
    """What one request answers with, whatever its shape; holds the ids shared by every chunk."""

    kind: str  # "chat" | "completion"
    model: str
    fingerprint: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self):
        prefix = "chatcmpl-" if self.kind == "chat" else "cmpl-"
        self.id = self.id or prefix + secrets.token_hex(12)

    def _head(self, obj: str) -> dict:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
        }

    # ---------------------------------------------------------------------------------- whole answers

    def chat(
        self,
        text: str | None,
        finish: str,
        usage: Usage,
        logprobs: dict | None,
        tool_calls: list[dict] | None = None,
    ) -> dict:
        message: dict = {"role": "assistant", "content": text, "refusal": None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        choice = {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish}
        return {**self._head("chat.completion"), "choices": [choice], "usage": usage_dict(usage)}

    def completion(self, text: str, finish: str, usage: Usage, logprobs: dict | None) -> dict:
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return {**self._head("text_completion"), "choices": [choice], "usage": usage_dict(usage)}

    # ---------------------------------------------------------------------------------- stream chunks

    def chunk(
        self,
        delta: dict | str | None,
        *,
        finish: str | None = None,
        logprobs: dict | None = None,
        include_usage: bool = False,
    ) -> dict:
        """One streamed choice: `delta` is the chat delta dict, or the text for completions."""
        if self.kind == "chat":
            choice = {"index": 0, "delta": delta or {}, "logprobs": logprobs, "finish_reason": finish}
            out = {**self._head("chat.completion.chunk"), "choices": [choice]}
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": logprobs, "finish_reason": finish}
            out = {**self._head("text_completion"), "choices": [choice]}
        if include_usage:
            out["usage"] = None
        return out

    def usage_chunk(self, usage: Usage) -> dict:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {**self._head(obj), "choices": [], "usage": usage_dict(usage)}


class Logprobs:
    """Collects TokenLogprob entries and renders them in the chat or the legacy completions shape."""

    def __init__(self, id_to_bytes):
        self.entries: list[TokenLogprob] = []
        self.id_to_bytes = id_to_bytes

    def add(self, entries: list[TokenLogprob] | None) -> None:
        self.entries += entries or []

    def _bytes(self, token_id: int, text: str) -> list[int]:
        raw = self.id_to_bytes(token_id) if self.id_to_bytes else text.encode()
        return list(raw)

    def chat(self, entries: list[TokenLogprob] | None = None) -> dict:
        items = []
        for e in self.entries if entries is None else entries:
            top = [{"token": t, "logprob": lp, "bytes": self._bytes(i, t)} for i, t, lp in e.top]
            items.append(
                {
                    "token": e.text,
                    "logprob": e.logprob,
                    "bytes": self._bytes(e.token_id, e.text),
                    "top_logprobs": top,
                }
            )
        return {"content": items, "refusal": None}

    def completion(self, entries: list[TokenLogprob] | None = None, offset: int = 0) -> dict:
        entries = self.entries if entries is None else entries
        offsets, pos = [], offset
        for e in entries:
            offsets.append(pos)
            pos += len(e.text)
        return {
            "tokens": [e.text for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{t: lp for _, t, lp in e.top} for e in entries],
            "text_offset": offsets,
        }
