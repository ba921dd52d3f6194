"""Short prefills as rows of the decode step's shape (engine/graph_prefill.py) equal the chunked prefill."""

from __future__ import annotations

import pytest
import torch

from pixdesk.engine.cache import KVCache
from pixdesk.engine.generate import prefill
from pixdesk.engine.graph_prefill import GraphPrefill
from pixdesk.model.regions import CompiledBlocks

from .helpers import TOL


@pytest.mark.parametrize(("start", "n"), [(0, 5), (37, 11), (48, 1), (20, 16), (30, 17), (3, 64)])
def test_rows_prefill_equals_chunked_prefill(tiny, start, n):
    model = tiny.model
    g = torch.Generator().manual_seed(start * 100 + n)
    prefix = model.tok_embeddings(torch.randint(10, 2000, (start,), generator=g))
    new = model.tok_embeddings(torch.randint(10, 2000, (n,), generator=g))
    kv_a, kv_b = KVCache.for_model(model, 3, 160), KVCache.for_model(model, 3, 160)
    with torch.inference_mode():
        for kv in (kv_a, kv_b):
            if start:
                prefill(model, kv, 1, prefix, 0)
        want = prefill(model, kv_a, 1, new, start)
        rows = GraphPrefill(model, kv_b, blocks=None, kernel=False, bucket_size=32)
        got = rows.run(1, new, start)
    assert float((got - want).abs().max()) <= TOL * float(want.abs().max())
    end = start + n
    for layer in range(len(kv_a.k)):  # the same keys and values in the slot, other slots untouched
        assert torch.allclose(kv_a.k[layer][1, :end], kv_b.k[layer][1, :end], atol=1e-5)
        assert torch.allclose(kv_a.v[layer][1, :end], kv_b.v[layer][1, :end], atol=1e-5)
        assert not kv_b.k[layer][[0, 2]].any()


def test_fits_up_to_the_largest_row_bucket(tiny_dir):
    from pixdesk.model.quant import QuantSpec, quantize_model
    from pixdesk.weights.checkpoint import load_checkpoint

    model = load_checkpoint(tiny_dir).model
    rows = GraphPrefill(model, KVCache.for_model(model, 1, 80), blocks=None, kernel=False)
    assert rows.fits(1) and rows.fits(64)
    assert not rows.fits(0) and not rows.fits(65)
    quantize_model(model, QuantSpec("int8"))  # past 16 rows quantized linears dequantize: no gain in a graph
    rows = GraphPrefill(model, KVCache.for_model(model, 1, 80), blocks=None, kernel=False)
    assert rows.fits(16) and not rows.fits(17)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled, captured path needs CUDA")
def test_rows_graph_on_cuda_equals_eager_prefill(tiny_dir):
    """Compiled regions, captured per (rows, key bucket), the decode-attention kernel: the same logits."""
    from pixdesk.weights.checkpoint import load_checkpoint

    model = load_checkpoint(tiny_dir, dtype=torch.bfloat16, device="cuda").model.fuse_projections()
    kv_a, kv_b = KVCache.for_model(model, 2, 300), KVCache.for_model(model, 2, 300)
    rows = GraphPrefill(model, kv_b, blocks=CompiledBlocks(), kernel=True, bucket_size=64)
    g = torch.Generator(device="cuda").manual_seed(0)
    with torch.inference_mode():
        prefix = model.tok_embeddings(torch.randint(10, 2000, (70,), device="cuda", generator=g))
        for kv in (kv_a, kv_b):
            prefill(model, kv, 1, prefix, 0)
        start = 70
        for n in (5, 20, 1, 40, 16):  # row buckets 16, 32, 16, 64, 16; key buckets 128 and 192
            new = model.tok_embeddings(torch.randint(10, 2000, (n,), device="cuda", generator=g))
            want = prefill(model, kv_a, 1, new, start)
            got = rows.run(1, new, start)
            assert float((got - want).abs().max()) <= 0.05 * float(want.abs().max()), n
            start += n
    assert len(rows.graphs) >= 4


def test_a_failing_compiled_prefill_falls_back_to_eager_and_the_request_goes_on(tiny, monkeypatch, caplog):
    """A compiler error in the rows graph (or the regions) is logged once; that request and the next ones
    prefill eagerly and produce the reference tokens."""
    from pixdesk.engine.sampling import SamplingParams

    from .helpers import Run, assert_same_run, engine, reference, user

    def broken(*_):
        raise RuntimeError("simulated compiler error")

    monkeypatch.setattr(GraphPrefill, "run", broken)
    with engine(tiny, max_batch=2, static_decode=True) as eng:
        assert eng.scheduler.prefiller.rows is not None
        params = SamplingParams(max_tokens=6, logprobs=True, top_logprobs=2)
        for text in ("a short question", "another one"):
            prompt = eng.encode_chat([user(text)])
            run = Run(eng.submit(prompt, params))
            run.wait()
            assert_same_run(run.tokens, run.logprobs, *reference(tiny, prompt, params))
        assert eng.scheduler.prefiller.rows is None
    assert sum("compiled prefill failed" in r.getMessage() for r in caplog.records) == 1
