"""Structured output: logit masks from JSON schemas and Lark grammars, built with llguidance.

Why llguidance (measured in TOOLCHAIN.md section 2 and bench/mask_cost.py): grammars compile in ~1 ms (a new
schema arrives with every request, so compile time is on the request path), the wheel has no dependencies,
`import` takes 0.2 s, and control tokens are never allowed inside JSON strings. xgrammar masks ~3x faster
(both are well under 0.1 ms per step, noise next to a 12B decode step) but compiles 20x slower and pulls in
torch, transformers and a 1 GB triton wheel.

A GrammarMask is the scheduler's `LogitMask`. It guarantees that a request either ends with text the
grammar accepts or ends with a typed error, never invalid JSON with a success status:

- EOS (id 2) is allowed only where the grammar accepts (llguidance puts it in the mask then).
- The mask knows its token budget. From every state it computes a *closing*: a short token sequence that
  completes the document (forced bytes, then structural bytes in the order `" } ] ,` ...). Example: after
  `{"total": 1` with required key "name" left, the closing is `, "name": ""}`. A request whose shortest
  document does not fit `max_tokens` is refused before it is queued. When the budget left is within a margin
  of the closing, only tokens after which the closing still fits are allowed (the likeliest few plus the
  closing's first token), so the model is driven to close the JSON in time.
- After each token the next mask and closing are computed on a worker thread while the model runs
  (llguidance drops the GIL while it computes); `mask()` only waits for that result.
"""

from __future__ import annotations

import json
import math
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import llguidance.numpy as lnp
import numpy as np
import torch
from llguidance import LLMatcher, LLTokenizer, TokenizerWrapper

from pixdesk.engine.sampling import SamplingParams
from pixdesk.errors import InternalError, InvalidRequest
from pixdesk.tokenizer.tekken import Tekkenizer

# Compact but readable JSON, the separators json.dumps writes (and mistral_common uses for tool calls).
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# Bytes the closing walk prefers: close strings and containers first, then the cheapest values.
_CLOSE_ORDER = b'"}],:0{[tfn-.e1' + bytes(b for b in range(256) if b not in b'"}],:0{[tfn-.e1')
MAX_CLOSING_BYTES = 4096  # a closing longer than this means the grammar is not bounded enough to drive
MARGIN = 16  # budget slack (tokens) under which every allowed token must keep the closing in budget
CANDIDATES = 4  # tokens checked in that zone, besides the closing's own first token


class _TokenSource:
    """What llguidance's TokenizerWrapper reads: every id's bytes, specials by name, and an encoder."""

    def __init__(self, tok: Tekkenizer):
        self.eos_token_id, self.bos_token_id = tok.EOS, tok.BOS
        self.special_token_ids = [i for i in range(tok.n_words) if tok.is_special(i)]
        # 0xFF never starts a valid UTF-8 text token, so prefixed names cannot collide with text.
        self.tokens = [
            b"\xff" + tok.id_to_piece(i).encode() if tok.is_special(i) else tok.id_to_bytes(i)
            for i in range(tok.n_words)
        ]
        self._tok = tok

    def __call__(self, text: bytes | str) -> list[int]:
        return self._tok.encode(text.decode("utf-8", "replace") if isinstance(text, bytes) else text)


class GrammarFactory:
    """Builds the llguidance tokenizer once per Tekkenizer and makes masks; owns the mask worker thread."""

    def __init__(self, tok: Tekkenizer, *, background: bool = True):
        self.tok = tok
        self._lock = threading.Lock()
        self._lltok: LLTokenizer | None = None
        self._close_ids: list[int] | None = None
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="pixdesk-grammar") if background else None

    @property
    def lltokenizer(self) -> LLTokenizer:
        with self._lock:  # ~1 s on the 131k vocabulary: build once, on first use
            if self._lltok is None:
                self._lltok = LLTokenizer(
                    TokenizerWrapper(_TokenSource(self.tok)), n_vocab=self.tok.n_words, eos_token=self.tok.EOS
                )
                byte_ids = _single_byte_ids(self.tok)
                self._close_ids = [byte_ids[b] for b in _CLOSE_ORDER if byte_ids[b] >= 0]
            return self._lltok

    @property
    def close_ids(self) -> list[int]:
        """Single-byte token ids in the closing walk's order of preference."""
        if self._close_ids is None:
            _ = self.lltokenizer
        return self._close_ids

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def submit(self, fn, *args) -> Future | object:
        """Run fn on the worker (a Future), or inline when there is none or it was closed (the result)."""
        if self._pool is not None:
            try:
                return self._pool.submit(fn, *args)
            except RuntimeError:  # closed while requests were still running: finish them inline
                pass
        return fn(*args)

    # ------------------------------------------------------------------------------ grammars

    def matcher(self, grammar: str, *, param: str) -> LLMatcher:
        m = LLMatcher(self.lltokenizer, grammar, log_level=0)  # 0: no "Parser Error" lines on stderr
        if m.is_error():
            raise InvalidRequest(f"{param}: the grammar engine rejected it: {m.get_error()}", param=param)
        return m

    def json_schema(self, schema: dict, max_tokens: int, *, param: str = "response_format") -> GrammarMask:
        if not isinstance(schema, dict):
            raise InvalidRequest(f"{param} must be a JSON object (a JSON schema)", param=param)
        try:
            grammar = LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
        except (ValueError, TypeError) as e:
            raise InvalidRequest(f"{param}: not a usable JSON schema: {e}", param=param) from e
        return GrammarMask(self, self.matcher(grammar, param=param), max_tokens)

    def json_object(self, max_tokens: int) -> GrammarMask:
        return self.json_schema({"type": "object"}, max_tokens)

    def lark(self, lark: str, max_tokens: int, *, param: str) -> GrammarMask:
        return GrammarMask(self, self.matcher(LLMatcher.grammar_from_lark(lark), param=param), max_tokens)


def _single_byte_ids(tok: Tekkenizer) -> list[int]:
    """Token id of each single byte (-1 if the vocabulary lacks it); tekken has all 256 as ranks 0..255."""
    ids = [-1] * 256
    for i in range(tok.n_words):
        if not tok.is_special(i):
            b = tok.id_to_bytes(i)
            if len(b) == 1 and ids[b[0]] < 0:
                ids[b[0]] = i
    return ids


# bits of one mask byte -> 8 additive logit offsets (0 allowed, -inf not), bit i%8 of byte i//8 is token i
_BYTE_TO_OFFSETS = np.where(
    np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little").astype(bool),
    np.float32(0.0),
    np.float32(-np.inf),
)  # (256, 8)


@dataclass
class _Step:
    offsets: torch.Tensor  # fp32 (n_words,): 0 where the grammar allows the token, -inf elsewhere
    closing: list[int] | None  # tokens that finish the document from here; None: none found
    fresh: bool = True  # False: closing is from an earlier step (far from the budget, see _compute)


class GrammarMask:
    """LogitMask over one matcher with a token budget (module docstring)."""

    def __init__(self, factory: GrammarFactory, matcher: LLMatcher, max_tokens: int):
        self.factory, self.matcher, self.max_tokens = factory, matcher, max_tokens
        self.generated = 0
        self.tokens: list[int] = []
        self._bits = lnp.allocate_token_bitmask(1, factory.tok.n_words)
        first = self._compute(None)
        if first.closing is None or len(first.closing) + 1 > max_tokens:
            need = "an unbounded number of" if first.closing is None else str(len(first.closing) + 1)
            raise InvalidRequest(
                f"max_tokens is {max_tokens}, but the shortest valid output takes {need} tokens; "
                "raise max_tokens or bound the schema (maxLength, maxItems)",
                param="max_tokens",
            )
        self._next: Future | _Step = first
        # Budget slack under which every token is checked. One token can open a structure whose own closing
        # is long (a receipt item: `{"name": "", "quantity": null, ...}`), so the slack grows with the
        # shortest document and with the largest one-token growth seen so far.
        self.margin = max(MARGIN, len(first.closing))

    @property
    def accepting(self) -> bool:
        return self.matcher.is_accepting()

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        step = self._next.result() if isinstance(self._next, Future) else self._next
        self._next = step
        left = self.max_tokens - self.generated  # tokens this request may still emit, EOS included
        if step.closing is None or (step.fresh and len(step.closing) + 1 > left):
            raise InvalidRequest(
                f"the output could not be completed within max_tokens={self.max_tokens}: "
                f"{self.generated} tokens were generated and the document is still open; raise max_tokens",
                param="max_tokens",
            )
        offsets = step.offsets
        if left - (len(step.closing) + 1) < self.margin:
            offsets = self._keep_closable(logits, offsets, step.closing, left)
        v, n = logits.shape[-1], offsets.shape[0]
        if v > n:  # model rows past the tokenizer's vocabulary are never allowed
            offsets = torch.cat([offsets, offsets.new_full((v - n,), -math.inf)])
        return logits + offsets[:v].to(logits.device)  # one add: cheaper than masked_fill on 131k logits

    def accept(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise InternalError(f"structured output: token {token} was sampled outside the grammar mask")
        self.generated += 1
        self.tokens.append(token)
        if token != self.factory.tok.EOS and self.generated < self.max_tokens:
            prev = self._next if isinstance(self._next, _Step) else None
            self._next = self.factory.submit(self._compute, prev)

    # ------------------------------------------------------------------------------ internals

    def _compute(self, prev: _Step | None) -> _Step:
        lnp.fill_next_token_bitmask(self.matcher, self._bits, 0)
        n = self.factory.tok.n_words
        offsets = torch.from_numpy(_BYTE_TO_OFFSETS[self._bits.view(np.uint8)[0]].reshape(-1)[:n])
        left = self.max_tokens - self.generated
        # The closing walk costs ~0.5 ms; far from the budget an 8-step-old length is good enough.
        if prev is not None and prev.closing is not None and left - len(prev.closing) > 4 * self.margin:
            if self.generated % 8:
                return _Step(offsets, prev.closing, fresh=False)
        closing = closing_tokens(self.factory, self.matcher)
        if prev is not None and prev.fresh and prev.closing is not None and closing is not None:
            self.margin = max(self.margin, 2 * (len(closing) - len(prev.closing)))
        return _Step(offsets, closing)

    def _keep_closable(
        self, logits: torch.Tensor, offsets: torch.Tensor, closing: list[int], left: int
    ) -> torch.Tensor:
        """Only tokens after which a closing still fits the budget: the likeliest few and the closing's."""
        n = offsets.shape[0]
        scores = logits[:n] + offsets.to(logits.device)
        top = torch.topk(scores, min(CANDIDATES, n)).indices.tolist()
        first = closing[0] if closing else self.factory.tok.EOS
        keep = [t for t in dict.fromkeys([first, *top]) if offsets[t] == 0 and self._fits_after(t, left - 1)]
        out = torch.full_like(offsets, -math.inf)
        out[keep or [first]] = 0.0  # nothing fits: the closing's first token is the best move left
        return out

    def _fits_after(self, token: int, left: int) -> bool:
        if token == self.factory.tok.EOS:
            return self.matcher.is_accepting()
        probe = self.matcher.deep_copy()
        if not probe.consume_token(token):
            return False
        rest = closing_tokens(self.factory, probe)
        return rest is not None and len(rest) + 1 <= left


def closing_tokens(factory: GrammarFactory, matcher: LLMatcher) -> list[int] | None:
    """A short token sequence that makes `matcher` accepting (greedy, not always the shortest), or None.

    Walks a copy: forced tokens when the grammar forces bytes, else the first byte of _CLOSE_ORDER the
    grammar allows. The bytes are then re-tokenized canonically when the grammar takes that spelling.
    """
    probe = matcher.deep_copy()
    walked: list[int] = []
    run = 0  # how often the last byte repeated: a byte chosen 4 times in a row is tried last, which gets
    # the walk out of loops like "-0.0000..." where the grammar wants a non-zero digit somewhere
    while not probe.is_accepting():
        if len(walked) >= MAX_CLOSING_BYTES or probe.is_error():
            return None
        forced = probe.compute_ff_tokens()
        if forced and probe.consume_tokens(forced):
            walked += forced
            run = 0
            continue
        avoid = walked[-1] if run >= 4 else None
        t = _first_allowed(factory, probe, avoid)
        if t is None:
            return None
        run = run + 1 if walked and t == walked[-1] else 1
        walked.append(t)
    return _shorter_spelling(factory, matcher, walked)


def _first_allowed(factory: GrammarFactory, probe: LLMatcher, avoid: int | None) -> int | None:
    """Consume the first byte of _CLOSE_ORDER the grammar takes (`avoid` last) and return its token id."""
    for t in factory.close_ids:
        if t != avoid and probe.try_consume_tokens([t]) == 1:
            return t
    if avoid is not None and probe.try_consume_tokens([avoid]) == 1:
        return avoid
    return None


def _shorter_spelling(factory: GrammarFactory, matcher: LLMatcher, walked: list[int]) -> list[int]:
    if len(walked) <= 1:
        return walked
    try:
        text = factory.lltokenizer.decode_bytes(walked).decode("utf-8")
    except UnicodeDecodeError:  # the walk finishes a split character: keep its byte tokens
        return walked
    canon = factory.tok.encode(text)
    if len(canon) >= len(walked):
        return walked
    probe = matcher.deep_copy()
    if probe.try_consume_tokens(canon) == len(canon) and probe.is_accepting():
        return canon
    return walked


# ---------------------------------------------------------------------------------- response_format


def mask_for_response_format(
    factory: GrammarFactory, response_format: dict | None, params: SamplingParams
) -> GrammarMask | None:
    """OpenAI `response_format` -> a mask (None when absent or text); InvalidRequest names the bad field.

    Accepted: {"type": "text"}, {"type": "json_object"},
    {"type": "json_schema", "json_schema": {"name": str, "schema": {...}, "strict": bool, ...}}.
    """
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise InvalidRequest("response_format must be an object with a 'type'", param="response_format")
    kind = response_format.get("type")
    extra = set(response_format) - {"type", "json_schema"}
    if extra:
        raise InvalidRequest(f"response_format has unknown fields: {sorted(extra)}", param="response_format")
    if kind == "text":
        return None
    if kind not in ("json_object", "json_schema"):
        raise InvalidRequest(
            f"response_format.type must be 'text', 'json_object' or 'json_schema', got {kind!r}",
            param="response_format.type",
        )
    if params.stop:  # a stop string could cut the document short and still report success
        raise InvalidRequest("stop strings cannot be combined with a JSON response_format", param="stop")
    if kind == "json_object":
        return factory.json_object(params.max_tokens)
    where = "response_format.json_schema.schema"
    return factory.json_schema(json_schema_of(response_format), params.max_tokens, param=where)


def json_schema_of(response_format: dict) -> dict:
    spec = response_format.get("json_schema")
    where = "response_format.json_schema"
    if not isinstance(spec, dict):
        raise InvalidRequest(f"{where} must be an object with 'name' and 'schema'", param=where)
    extra = set(spec) - {"name", "schema", "strict", "description"}
    if extra:
        raise InvalidRequest(f"{where} has unknown fields: {sorted(extra)}", param=where)
    name = spec.get("name")
    if (
        not isinstance(name, str)
        or not name
        or len(name) > 64
        or not all(c.isalnum() or c in "_-" for c in name)
    ):
        raise InvalidRequest(
            f"{where}.name must be 1-64 characters of a-z, A-Z, 0-9, _ or -", param=f"{where}.name"
        )
    if "strict" in spec and not isinstance(spec["strict"], bool):
        raise InvalidRequest(f"{where}.strict must be true or false", param=f"{where}.strict")
    schema = spec.get("schema", {"type": "object"})  # OpenAI: absent schema means any object
    if not isinstance(schema, dict):
        raise InvalidRequest(f"{where}.schema must be a JSON schema object", param=f"{where}.schema")
    try:
        json.dumps(schema)
    except (TypeError, ValueError) as e:
        raise InvalidRequest(f"{where}.schema is not JSON: {e}", param=f"{where}.schema") from e
    return schema
