"""Cached prefill + decode equals full recomputation; sampling, stops, EOS, max tokens and logprobs."""

from __future__ import annotations

import random

import pytest
import torch

from pixdesk.engine.cache import KVCache
from pixdesk.engine.events import Delta, Finish
from pixdesk.engine.generate import StopFilter, embed_prompt, generate, prefill
from pixdesk.engine.sampling import SamplingParams
from pixdesk.errors import ContextLengthExceeded, InvalidRequest
from pixdesk.tokenizer.chat import ChatMessage, EncodedPrompt, ImageChunk, TextChunk, encode_instruct
from pixdesk.tokenizer.image import PreparedImage

TOL = 1e-4


def _image(rows: int, cols: int, seed: int) -> PreparedImage:
    px = torch.randn(3, rows * 16, cols * 16, generator=torch.Generator().manual_seed(seed))
    return PreparedImage(px, rows, cols, f"digest-{seed}", (cols * 16, rows * 16))


def _prompt(tok, images=(), text="Describe the image.") -> EncodedPrompt:
    content = [*(ImageChunk(i) for i in images), TextChunk(text)]
    return encode_instruct(tok, [ChatMessage("user", content)])


def _full_logits(model, prompt: EncodedPrompt, extra: list[int]) -> torch.Tensor:
    """All-position logits of prompt + extra tokens in one uncached forward."""
    ids = prompt.ids + extra
    full = EncodedPrompt(ids, prompt.images)
    kv = KVCache.for_model(model, 1, len(ids))
    with torch.no_grad():
        h = embed_prompt(model, full)[None]
        pos = torch.arange(len(ids))[None]
        return model.logits(model(h, pos, kv.view(torch.tensor([0]), pos)))[0]


def _greedy_logprob_run(tiny, prompt, n=12):
    params = SamplingParams(max_tokens=n, logprobs=True, top_logprobs=3)
    events = list(generate(tiny.model, tiny.tokenizer, prompt, params))
    tokens = [t for e in events if isinstance(e, Delta) for t in e.token_ids]
    lps = [lp for e in events if isinstance(e, Delta) for lp in (e.logprobs or [])]
    return tokens, lps, events[-1]


@pytest.mark.parametrize("grids", [[], [(3, 5)], [(3, 5), (2, 2)]])
def test_cached_decode_equals_full_recompute(tiny, grids):
    prompt = _prompt(tiny.tokenizer, [_image(r, c, i) for i, (r, c) in enumerate(grids)])
    tokens, lps, finish = _greedy_logprob_run(tiny, prompt)
    full = _full_logits(tiny.model, prompt, tokens)
    start = len(prompt.ids) - 1
    for step, (tok_id, lp) in enumerate(zip(tokens, lps)):
        want = full[start + step]
        assert lp.token_id == tok_id
        want_lp = torch.log_softmax(want, -1)
        assert abs(lp.logprob - float(want_lp[tok_id])) <= TOL * float(want_lp.abs().max())
        top2 = torch.topk(want, 2).values
        if float(top2[0] - top2[1]) > 1e-4:
            assert tok_id == int(torch.argmax(want)), f"step {step}"
    assert finish.usage.prompt_tokens == len(prompt.ids)


def test_cached_logits_match_recompute_every_step(tiny):
    """Compare raw logits step by step: prefill + decode_step against one uncached forward."""
    from pixdesk.engine.generate import decode_step

    prompt = _prompt(tiny.tokenizer, [_image(3, 5, 1)])
    kv = KVCache.for_model(tiny.model, 2, 128)
    rng = random.Random(0)
    extra = [rng.randrange(1000, 2048) for _ in range(10)]
    full = _full_logits(tiny.model, prompt, extra)
    with torch.no_grad():
        got = [prefill(tiny.model, kv, 1, embed_prompt(tiny.model, prompt), 0)]
        for i, t in enumerate(extra):
            pos = torch.tensor([len(prompt.ids) + i])
            got.append(decode_step(tiny.model, kv, torch.tensor([1]), torch.tensor([t]), pos)[0])
    want = full[len(prompt.ids) - 1 :]
    for g, w in zip(got, want):
        assert float((g - w).abs().max()) <= TOL * float(w.abs().max())


def test_chunked_prefill_equals_one_shot(tiny):
    prompt = _prompt(tiny.tokenizer, [_image(4, 6, 3)], text="a " * 40)
    with torch.no_grad():
        emb = embed_prompt(tiny.model, prompt)
        one = prefill(tiny.model, KVCache.for_model(tiny.model, 1, 256), 0, emb, 0, chunk=4096)
        chunked = prefill(tiny.model, KVCache.for_model(tiny.model, 1, 256), 0, emb, 0, chunk=7)
    assert float((one - chunked).abs().max()) <= TOL * float(one.abs().max())


def test_seeded_sampling_is_reproducible_and_varies(tiny):
    prompt = _prompt(tiny.tokenizer)

    def run(seed):
        p = SamplingParams(max_tokens=16, temperature=1.0, seed=seed)
        return [
            t
            for e in generate(tiny.model, tiny.tokenizer, prompt, p)
            if isinstance(e, Delta)
            for t in e.token_ids
        ]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_top_k_one_and_tiny_top_p_equal_greedy(tiny):
    prompt = _prompt(tiny.tokenizer)

    def run(**kw):
        p = SamplingParams(max_tokens=10, **kw)
        return [
            t
            for e in generate(tiny.model, tiny.tokenizer, prompt, p)
            if isinstance(e, Delta)
            for t in e.token_ids
        ]

    greedy = run()
    assert run(temperature=1.5, top_k=1, seed=3) == greedy
    assert run(temperature=1.5, top_p=1e-6, seed=3) == greedy


def test_max_tokens_gives_length_and_eos_gives_stop(tiny):
    prompt = _prompt(tiny.tokenizer)
    events = list(generate(tiny.model, tiny.tokenizer, prompt, SamplingParams(max_tokens=5)))
    assert events[-1].reason == "length" and events[-1].usage.completion_tokens == 5
    forced_eos = SamplingParams(max_tokens=5, logit_bias={2: 100.0})
    events = list(generate(tiny.model, tiny.tokenizer, prompt, forced_eos))
    assert isinstance(events[-1], Finish) and events[-1].reason == "stop"
    assert events[-1].usage.completion_tokens == 1
    assert "".join(e.text for e in events if isinstance(e, Delta)) == ""


def test_stop_string_never_streams_even_partly(tiny):
    prompt = _prompt(tiny.tokenizer)
    base = "".join(
        e.text
        for e in generate(tiny.model, tiny.tokenizer, prompt, SamplingParams(max_tokens=40))
        if isinstance(e, Delta)
    )
    assert len(base) > 12
    stop = base[8:12]  # a string the model will produce, likely spanning tokens
    events = list(generate(tiny.model, tiny.tokenizer, prompt, SamplingParams(max_tokens=40, stop=(stop,))))
    text = "".join(e.text for e in events if isinstance(e, Delta))
    assert events[-1].reason == "stop"
    assert text == base[: base.find(stop)]


@pytest.mark.parametrize("seed", range(20))
def test_stop_filter_random_splits(seed):
    rng = random.Random(seed)
    alphabet = "abEND "
    text = "".join(rng.choice(alphabet) for _ in range(60))
    stops = ("END", "b b")
    f = StopFilter(stops)
    out, stopped, i = "", False, 0
    while i < len(text) and not stopped:
        n = rng.randint(1, 4)
        piece, stopped = f.push(text[i : i + n])
        out += piece
        i += n
    if not stopped:
        out += f.flush()
    cut = min([text.find(s) for s in stops if s in text], default=len(text))
    assert out == text[:cut]
    assert not any(s in out for s in stops)


def test_context_overflow_is_refused_before_compute(tiny):
    prompt = _prompt(tiny.tokenizer)
    kv = KVCache.for_model(tiny.model, 1, 32)
    with pytest.raises(ContextLengthExceeded) as exc:
        next(generate(tiny.model, tiny.tokenizer, prompt, SamplingParams(max_tokens=100), kv=kv))
    assert str(len(prompt.ids)) in exc.value.message and "32" in exc.value.message


@pytest.mark.parametrize(
    "kw",
    [
        {"temperature": -1},
        {"temperature": float("nan")},
        {"temperature": float("inf")},
        {"top_p": 0},
        {"top_p": 1.5},
        {"top_k": -1},
        {"max_tokens": 0},
        {"max_tokens": -3},
        {"max_tokens": 10**9},
        {"seed": 2**64},
        {"top_logprobs": 50},
        {"logit_bias": {999999: 1.0}},
        {"stop": ("",)},
    ],
)
def test_sampling_bounds_are_checked(kw):
    with pytest.raises(InvalidRequest) as exc:
        SamplingParams(**kw).validate(vocab_size=2048)
    assert exc.value.param
