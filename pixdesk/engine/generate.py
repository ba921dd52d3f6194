"""Generation in two layers: step functions with no I/O (prefill, decode_step) and a driver yielding events.

The driver here runs one request on its own; the scheduler (engine/scheduler.py) batches the same step
functions across requests.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import torch

from pixdesk.engine.cache import KVCache
from pixdesk.engine.events import Delta, Event, Finish, TokenLogprob, Usage
from pixdesk.engine.sampling import SamplingParams, adjust_logits, make_generator, sample_one, token_logprobs
from pixdesk.errors import ContextLengthExceeded
from pixdesk.model.pixtral import Pixtral
from pixdesk.model.regions import CompiledBlocks
from pixdesk.tokenizer.chat import EncodedPrompt
from pixdesk.tokenizer.tekken import Tekkenizer

DEFAULT_CHUNK = 512


def embed_prompt(
    model: Pixtral, prompt: EncodedPrompt, image_features: torch.Tensor | None = None
) -> torch.Tensor:
    """Prompt ids -> embeddings (T, dim), running the vision encoder unless features are given."""
    if image_features is None and prompt.images:
        image_features = model.encode_images([img.pixels for img in prompt.images])
    ids = torch.tensor([prompt.ids], device=model.device)
    return model.embed(ids, image_features)[0]


def prefill(
    model: Pixtral,
    kv: KVCache,
    slot: int,
    embeds: torch.Tensor,
    start: int,
    chunk: int = DEFAULT_CHUNK,
    blocks: CompiledBlocks | None = None,
) -> torch.Tensor:
    """Run embeddings (T, dim) at positions start.. into `slot`, `chunk` tokens per forward.

    Returns fp32 logits (V,) of the last position only (the LM head runs once). `blocks`: the layers as
    compiled regions (model/regions.py).
    """
    slots = torch.tensor([slot], device=model.device)
    h = None
    for lo in range(0, embeds.shape[0], chunk):
        part = embeds[lo : lo + chunk][None]  # (1, t, dim)
        pos = torch.arange(start + lo, start + lo + part.shape[1], device=model.device)[None]
        h = model(part, pos, kv.view(slots, pos), blocks)
    return model.logits(h[0, -1])


def decode_step(
    model: Pixtral, kv: KVCache, slots: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """One new token per sequence: tokens (B,) at positions (B,) in slots (B,) -> fp32 logits (B, V)."""
    h = model.tok_embeddings(tokens[:, None].to(model.device))  # a generated [IMG] id is just an embedding
    pos = positions[:, None].to(model.device)
    return model.logits(model(h, pos, kv.view(slots, pos))[:, 0])


def check_context(n_prompt: int, max_tokens: int, context: int) -> None:
    if n_prompt + max_tokens > context:
        raise ContextLengthExceeded(
            f"the prompt has {n_prompt} tokens and max_tokens is {max_tokens}: {n_prompt + max_tokens} "
            "tokens "
            f"exceed the context of {context}; shorten the prompt, send fewer or smaller images, or lower "
            "max_tokens",
            param="max_tokens" if n_prompt < context else "messages",
        )


class StopFilter:
    """Holds back text that could be the start of a stop string, so no stop string ever streams, even partly.

    Example with stop "END": push("abcE") -> "abc" (holds "E"); push("N") -> "" (holds "EN");
    push("D tail") -> ("", stopped). With push("x") instead, "ENx" is released.
    """

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        buf = self.pending + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.pending = ""
            return buf[: min(hits)], True
        hold = max(
            (k for s in self.stops for k in range(1, min(len(s), len(buf)) + 1) if buf.endswith(s[:k])),
            default=0,
        )
        self.pending = buf[len(buf) - hold :]
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class TokenStream:
    """Token ids -> UTF-8-safe, stop-filtered text; the per-request bookkeeping shared with the scheduler."""

    def __init__(self, tok: Tekkenizer, params: SamplingParams):
        self.tok, self.params = tok, params
        self.decoder = tok.stream_decoder()
        self.stops = StopFilter(params.stop)
        self.counts: Counter[int] = Counter()
        self.n_generated = 0
        self.emitted: list[str] = []
        self.cut_by_stop_string = False

    def answer(self, generated: list[int]) -> tuple[str, list[int]] | None:
        """(text the client saw, the ids behind it) when they correspond exactly, for AnswerMemory."""
        if self.cut_by_stop_string:
            return None
        ids = generated[:-1] if generated and generated[-1] == self.tok.EOS else generated
        text = "".join(self.emitted)
        return (text, ids) if self.tok.decode(ids) == text else None

    def logprob_entry(self, logits: torch.Tensor, token: int) -> TokenLogprob:
        lp, top = token_logprobs(logits, token, self.params.top_logprobs)
        piece = self.tok.id_to_piece
        return TokenLogprob(token, piece(token), lp, [(i, piece(i), v) for i, v in top])

    def push(self, token: int, logits: torch.Tensor | None) -> tuple[Delta, str | None]:
        """Account one sampled token (`logits` may be None without logprobs). Returns (delta to emit, finish
        reason or None)."""
        delta, reason = self._push(token, logits)
        self.emitted.append(delta.text)
        return delta, reason

    def _push(self, token: int, logits: torch.Tensor | None) -> tuple[Delta, str | None]:
        self.n_generated += 1
        self.counts[token] += 1
        lps = [self.logprob_entry(logits, token)] if self.params.logprobs else None
        if token == self.tok.EOS:
            tail, stopped = self.stops.push(self.decoder.flush())
            self.cut_by_stop_string = stopped
            tail += "" if stopped else self.stops.flush()
            return Delta(tail, [], lps), "stop"
        text, stopped = self.stops.push(self.decoder.push(token))
        if stopped:
            self.cut_by_stop_string = True
            return Delta(text, [token], lps), "stop"
        if self.n_generated >= self.params.max_tokens:
            tail, stopped = self.stops.push(self.decoder.flush())
            text += tail + ("" if stopped else self.stops.flush())
            self.cut_by_stop_string = stopped
            return Delta(text, [token], lps), "stop" if stopped else "length"
        return Delta(text, [token], lps), None


def generate(
    model: Pixtral,
    tok: Tekkenizer,
    prompt: EncodedPrompt,
    params: SamplingParams,
    *,
    kv: KVCache | None = None,
    slot: int = 0,
    chunk: int = DEFAULT_CHUNK,
    cancelled: Callable[[], bool] = lambda: False,
) -> Iterator[Event]:
    """Run one request to completion, yielding Delta events and one final Finish."""
    n_prompt = len(prompt.ids)
    kv = kv or KVCache.for_model(model, 1, n_prompt + params.max_tokens)
    check_context(n_prompt, params.max_tokens, kv.max_len)
    gen = make_generator(params)
    stream = TokenStream(tok, params)
    slots = torch.tensor([slot], device=model.device)
    with torch.inference_mode():
        logits = prefill(model, kv, slot, embed_prompt(model, prompt), 0, chunk)
        while True:
            if cancelled():
                yield Finish("cancelled", Usage(n_prompt, stream.n_generated))
                return
            token = sample_one(adjust_logits(logits, params, stream.counts), params, gen)
            delta, reason = stream.push(token, logits)  # logprobs from the model's own distribution
            if delta.text or delta.token_ids or delta.logprobs:
                yield delta
            if reason:
                yield Finish(reason, Usage(n_prompt, stream.n_generated))
                return
            pos = torch.tensor([n_prompt + stream.n_generated - 1])
            logits = decode_step(model, kv, slots, torch.tensor([token]), pos)[0]
