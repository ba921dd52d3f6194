"""Sampling: pure functions over fp32 logits. Greedy, temperature, top-k, top-p, penalties, logit bias, seed.

Every value is range-checked once in `SamplingParams.validate` (at the edge); the functions below trust it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from pixdesk.errors import InvalidRequest

MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 512
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)

    def validate(self, vocab_size: int, max_tokens_limit: int = 1 << 20) -> SamplingParams:
        _int_range("max_tokens", self.max_tokens, 1, max_tokens_limit)
        _float_range("temperature", self.temperature, 0.0, 100.0)
        _float_range("top_p", self.top_p, 0.0, 1.0, low_open=True)
        _int_range("top_k", self.top_k, 0, vocab_size)
        if self.seed is not None:
            _int_range("seed", self.seed, -(2**63), 2**63 - 1)
        _float_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        _float_range("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _int_range("top_logprobs", self.top_logprobs, 0, MAX_TOP_LOGPROBS)
        if len(self.stop) > 16 or any(not isinstance(s, str) or not s or len(s) > 1000 for s in self.stop):
            raise InvalidRequest(
                "stop: give at most 16 non-empty strings of at most 1000 characters", param="stop"
            )
        for tok, bias in self.logit_bias.items():
            _int_range("logit_bias key", tok, 0, vocab_size - 1)
            _float_range("logit_bias value", bias, -100.0, 100.0)
        return self


def _int_range(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"{name} must be an integer in [{low}, {high}], got {value!r}", param=name)


def _float_range(name: str, value, low: float, high: float, *, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise InvalidRequest(
            f"{name} must be a finite number in {bracket}{low}, {high}], got {value!r}", param=name
        )


def make_generator(params: SamplingParams, device: torch.device | str = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    if params.seed is None:
        gen.seed()
    else:
        gen.manual_seed(params.seed % (2**63))
    return gen


def adjust_logits(logits: torch.Tensor, params: SamplingParams, counts: dict[int, int]) -> torch.Tensor:
    """Logit bias and OpenAI-style frequency/presence penalties over this request's generated tokens."""
    if not params.logit_bias and not counts:
        return logits
    logits = logits.clone()
    for tok, bias in params.logit_bias.items():
        logits[tok] += bias
    if counts and (params.frequency_penalty or params.presence_penalty):
        ids = torch.tensor(list(counts), device=logits.device)
        n = torch.tensor(list(counts.values()), dtype=logits.dtype, device=logits.device)
        logits[ids] -= n * params.frequency_penalty + params.presence_penalty
    return logits


def greedy_ids(logits: torch.Tensor, biases: list[dict[int, float] | None]) -> torch.Tensor:
    """Greedy ids (B,) of a batch (B, V), left on the logits' device. Row i's logit bias (biases[i]; None or
    {} for none) is added to a copy first, so its id is the pick of `adjust_logits` + `sample_one`.

    Nothing here waits for the device (the bias goes up through pinned memory; a plain host->device copy
    waits for the stream), so the scheduler can queue this behind a step that is still running."""
    triples = [(i, tok, v) for i, b in enumerate(biases) if b for tok, v in b.items()]
    scores = logits
    if triples:
        scores = logits.clone()
        rows, toks, values = zip(*triples)
        index = to_device([rows, toks], torch.long, logits.device)
        scores.index_put_(
            (index[0], index[1]), to_device(values, logits.dtype, logits.device), accumulate=True
        )
    return scores.argmax(-1)


def to_device(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Host values -> a tensor on `device` without waiting for the stream (through pinned memory)."""
    t = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)  # the pinned block is held until the copy ran
    return t.to(device)


def sample_one(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator | None) -> int:
    """One token id from fp32 logits (V,)."""
    if params.temperature == 0.0:
        return int(torch.argmax(logits))
    scaled = logits / params.temperature
    if params.top_k:
        kth = torch.topk(scaled, params.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, -math.inf)
    if params.top_p < 1.0:
        scaled = _top_p_filter(scaled, params.top_p)
    probs = torch.softmax(scaled, dim=-1)
    return int(torch.multinomial(probs, 1, generator=gen))


def _top_p_filter(scaled: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches top_p (always at least one)."""
    sorted_logits, order = torch.sort(scaled, descending=True)
    cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
    drop_sorted = (
        cum - torch.softmax(sorted_logits, dim=-1)
    ) >= top_p  # mass before this token already enough
    drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
    return scaled.masked_fill(drop, -math.inf)


def token_logprobs(logits: torch.Tensor, token: int, top_n: int) -> tuple[float, list[tuple[int, float]]]:
    """Log-probability of `token` under the model's own distribution (before sampling transforms)."""
    logp = torch.log_softmax(logits, dim=-1)
    top: list[tuple[int, float]] = []
    if top_n:
        values, ids = torch.topk(logp, top_n)
        top = [(int(i), float(v)) for i, v in zip(ids, values)]
    return float(logp[token]), top
