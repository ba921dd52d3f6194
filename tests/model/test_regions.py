"""Decoder and vision blocks as compiled regions (model/regions.py) compute what the eager blocks compute,
with one compiled graph shared by every layer."""

from __future__ import annotations

import torch
from torch._dynamo.utils import counters

from pixdesk.engine.cache import KVCache
from pixdesk.engine.generate import prefill
from pixdesk.model.regions import CompiledBlocks
from pixdesk.weights.checkpoint import load_checkpoint

TOL = 1e-5


def _prefill_both(model, blocks, start: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    prefix = model.tok_embeddings(torch.randint(10, 2000, (start,), generator=g))
    new = model.tok_embeddings(torch.randint(10, 2000, (n,), generator=g))
    outs = []
    for b in (None, blocks):
        kv = KVCache.for_model(model, 1, 128)
        if start:
            prefill(model, kv, 0, prefix, 0)
        outs.append(prefill(model, kv, 0, new, start, blocks=b))
    return outs[0], outs[1]


def test_compiled_regions_match_eager_prefill_and_vision(tiny_dir):
    torch._dynamo.reset()
    counters.clear()
    model = load_checkpoint(tiny_dir).model.fuse_projections()
    blocks = CompiledBlocks()
    with torch.inference_mode():
        # a full prefill, two lengths (dynamic: no recompile), a prefix hit, a one-token prefill
        for start, n in [(0, 37), (0, 64), (37, 11), (48, 1)]:
            want, got = _prefill_both(model, blocks, start, n, seed=start + n)
            assert float((got - want).abs().max()) <= TOL * float(want.abs().max()), (start, n)
        pixels = torch.randn(3, 32, 48, generator=torch.Generator().manual_seed(1))
        want, got = model.encode_images([pixels]), model.encode_images([pixels], blocks)
        assert float((got - want).abs().max()) <= TOL * float(want.abs().max())
    # project/finish/norm for text, again for the 1-token specialization, project/finish for vision;
    # never one per layer (the tiny model has several) and never one per prompt length.
    assert len(model.layers) > 1
    assert counters["frames"]["ok"] <= 8


def test_native_gqa_causal_attention_equals_repeated_heads(monkeypatch):
    import pixdesk.model.layers as layers

    g = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(1, 9, 8, 16, generator=g),
        torch.randn(1, 9, 2, 16, generator=g),
        torch.randn(1, 9, 2, 16, generator=g),
    )
    monkeypatch.setattr(layers, "NATIVE_GQA", False)
    want = layers.sdpa(q, k, v, None, causal=True)
    monkeypatch.setattr(layers, "NATIVE_GQA", True)
    got = layers.sdpa(q, k, v, None, causal=True)
    assert float((got - want).abs().max()) < 1e-5
