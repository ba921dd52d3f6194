"""Typed events a generation yields, shared by the driver, the scheduler and every front."""

from __future__ import annotations

from dataclasses import dataclass, field

from pixdesk.errors import PixdeskError


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    text: str
    logprob: float
    top: list[tuple[int, str, float]] = field(default_factory=list)  # (id, text, logprob)


@dataclass(frozen=True)
class Delta:
    text: str  # UTF-8 safe: never a split character, never part of a stop string
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Finish:
    reason: str  # "stop" | "length" | "cancelled" | "error"
    usage: Usage
    error: PixdeskError | None = None


Event = Delta | Finish
