"""The static decode step (all slots, bucketed attention) equals the per-request decode step."""

from __future__ import annotations

import pytest
import torch

from pixdesk.engine.cache import KVCache
from pixdesk.engine.generate import decode_step, embed_prompt, prefill
from pixdesk.engine.static import StaticDecoder

from .helpers import TOL, image, user


def test_static_step_matches_dynamic_step(tiny):
    from pixdesk.tokenizer.chat import encode_instruct

    model, tok = tiny.model, tiny.tokenizer
    prompts = [encode_instruct(tok, [user(*( [image(2, 3, i)] if i else []), "question " * (3 + 5 * i))])
               for i in range(3)]  # fmt: skip
    kv_a, kv_b = (KVCache.for_model(model, 4, 200) for _ in range(2))
    slots = [3, 0, 2]  # slot 1 idle: parked on the spare position
    with torch.no_grad():
        for slot, p in zip(slots, prompts):
            for kv in (kv_a, kv_b):
                prefill(model, kv, slot, embed_prompt(model, p), 0)
        static = StaticDecoder(model, kv_b, compile=False, bucket_size=16)
        positions = torch.tensor([len(p.ids) for p in prompts])
        tokens = torch.tensor([1100, 1200, 1300])
        for step in range(5):
            want = decode_step(model, kv_a, torch.tensor(slots), tokens, positions)
            got = static.step(torch.tensor(slots), tokens, positions)
            assert float((got - want).abs().max()) <= TOL * float(want.abs().max()), step
            tokens, positions = want.argmax(-1), positions + 1
    assert len(static.steps) >= 1


def test_the_step_compiled_layer_by_layer_equals_the_eager_step(tiny):
    """LAYER_REGIONS: one compiled layer function called for every layer (traced once)."""
    model = tiny.model
    kv_a, kv_b = (KVCache.for_model(model, 2, 64) for _ in range(2))
    g = torch.Generator().manual_seed(0)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with torch.no_grad():
        prefix = model.tok_embeddings(torch.randint(10, 1000, (9,), generator=g))
        for kv in (kv_a, kv_b):
            prefill(model, kv, 1, prefix, 0)
        eager = StaticDecoder(model, kv_a, compile=False, bucket_size=16)
        regions = StaticDecoder(model, kv_b, compile=True, bucket_size=16, layer_regions=True)
        slots, tokens, positions = torch.tensor([1]), torch.tensor([500]), torch.tensor([9])
        for step in range(3):
            want = eager.step(slots, tokens, positions)
            got = regions.step(slots, tokens, positions)
            assert float((got - want).abs().max()) <= TOL * float(want.abs().max()), step
            tokens, positions = want.argmax(-1), positions + 1
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 3  # prologue, one layer, head
    assert torch.equal(kv_a.k[0], kv_b.k[0]) or float((kv_a.k[0] - kv_b.k[0]).abs().max()) < 1e-4


def test_the_step_picks_with_each_slots_bias_and_feeds_itself(tiny):
    """The static step's own greedy picks (engine/slot_picks.py) equal greedy_ids on its logits; a slot's
    bias row follows the bias it is given (and clears); tokens fed from the picks equal the same host ids."""
    from pixdesk.engine.sampling import greedy_ids

    model = tiny.model
    kv_a, kv_b = (KVCache.for_model(model, 3, 64) for _ in range(2))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for slot in (0, 2):
            prefix = model.tok_embeddings(torch.randint(10, 1000, (9,), generator=g))
            for kv in (kv_a, kv_b):
                prefill(model, kv, slot, prefix, 0)
        a, b = (StaticDecoder(model, kv, compile=False, bucket_size=16) for kv in (kv_a, kv_b))
        slots, positions, tokens = torch.tensor([2, 0]), torch.tensor([9, 9]), torch.tensor([500, 600])
        bias_steps, picked = [[{1500: 90.0}, None], [{}, {2: -100.0, 77: 100.0}], [None, None]], []
        for step, biases in enumerate(bias_steps):
            logits = a.launch(slots, tokens, positions, biases)
            want = greedy_ids(logits, biases)
            assert torch.equal(a.picks[slots], want), step
            fed = b.launch(slots, b.picks if step else tokens, positions, biases, logits=step == 2)
            assert (fed is None) if step < 2 else torch.equal(fed, logits)
            assert torch.equal(b.picks, a.picks), step
            tokens, positions = want, positions + 1
            picked.append(want.tolist())
        assert picked[0][0] == 1500 and picked[1][1] == 77  # the biases took effect
        assert picked[2] == logits.argmax(-1).tolist() and not a.slot_picks.bias.any()  # and cleared
        # A step fed from the picks, then run again as a graph capture's warm-up runs it: same picks.
        b.launch(slots, b.picks, positions)
        once = b.picks.clone()
        b._picked_step(b.tokens, b.positions, b._key_pos(b.bucket(int(positions.max()) + 1)))
        assert torch.equal(b.picks, once)


def test_fused_projections_compute_the_same(tiny_dir):
    from pixdesk.weights.checkpoint import load_checkpoint

    a, b = load_checkpoint(tiny_dir).model, load_checkpoint(tiny_dir).model.fuse_projections()
    assert hasattr(b.layers[0].attention, "wqkv") and not hasattr(b.layers[0].attention, "wq")
    ids = torch.tensor([[1, 3, 1500, 1600, 1700, 4]])
    pos = torch.arange(6)[None]
    with torch.no_grad():
        outs = [m.logits(m(m.embed(ids), pos, KVCache.for_model(m, 1, 8).view(torch.tensor([0]), pos)))
                for m in (a, b)]  # fmt: skip
    assert float((outs[0] - outs[1]).abs().max()) <= TOL * float(outs[0].abs().max())


def test_engine_with_static_decode_equals_reference(tiny):
    from pixdesk.engine.sampling import SamplingParams

    from .helpers import Run, assert_same_run, engine, reference

    with engine(tiny, max_batch=3, static_decode=True) as eng:
        assert eng.scheduler.decoder is not None
        prompts = [eng.encode_chat([user(f"q {i} " * (i + 2))]) for i in range(4)]
        params = SamplingParams(max_tokens=9, logprobs=True, top_logprobs=2)
        runs = [Run(eng.submit(p, params)) for p in prompts]
        for r, p in zip(runs, prompts):
            r.wait()
            assert_same_run(r.tokens, r.logprobs, *reference(tiny, p, params))


def test_warm_up_runs_real_steps_and_leaves_no_traffic_behind(tiny):
    """start() warms up where the decode step compiles (GPU); the same call works on the CPU engine."""
    from pixdesk.engine.backend import LocalEngine
    from pixdesk.engine.scheduler_config import SchedulerConfig

    with LocalEngine(tiny, SchedulerConfig(max_batch=2, max_context=256)) as eng:
        assert eng.warm_up() > 0 and eng.warmup_s is not None
        stats = eng.stats()
        assert stats["submitted"] == 0 and stats["generated_tokens"] == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled, captured step needs CUDA")
@pytest.mark.parametrize("quant", ["none", "int8"])
def test_captured_step_on_cuda_equals_the_dynamic_step(tiny_dir, quant):
    """The CUDA step (compiled pieces, graphs, the RoPE + cache-write kernel, decode attention) against the
    per-request step in plain torch ops, with an idle slot."""
    from pixdesk.model.quant import QuantSpec, quantize_model
    from pixdesk.weights.checkpoint import load_checkpoint

    model = load_checkpoint(tiny_dir, dtype=torch.bfloat16, device="cuda").model
    if quant != "none":
        quantize_model(model, QuantSpec(quant))
    model.fuse_projections()
    kv_a, kv_b = KVCache.for_model(model, 3, 300), KVCache.for_model(model, 3, 300)
    g = torch.Generator(device="cuda").manual_seed(0)
    static = StaticDecoder(model, kv_b, bucket_size=64)
    assert static.kernel and static.use_graphs
    with torch.inference_mode():
        for slot, n in ((0, 70), (2, 130)):
            prefix = model.tok_embeddings(torch.randint(10, 2000, (n,), device="cuda", generator=g))
            for kv in (kv_a, kv_b):
                prefill(model, kv, slot, prefix, 0)
        # two live slots and an idle one, then one live slot (the bucket grows past 192 keys)
        for rows, starts in (([0, 2], [70, 130]), ([2], [133])):
            slots, positions = torch.tensor(rows), torch.tensor(starts)
            tokens = torch.tensor([900, 1000][: len(rows)])
            for step in range(3 if len(rows) == 2 else 64):
                want = decode_step(model, kv_a, slots, tokens.cuda(), positions)
                got = static.step(slots, tokens, positions)
                assert float((got - want).abs().max()) <= 0.05 * float(want.abs().max()), (rows, step)
                tokens, positions = want.argmax(-1).cpu(), positions + 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused int4 kernels need CUDA")
def test_int4_step_with_fused_epilogues_on_cuda_equals_the_unfused_one():
    """int4 at one slot with heads of 128: the q|k|v GEMV rotates and writes the cache and the gate|up GEMV
    applies SiLU x up in their epilogues (model/int4_fused.py); the same step with both as kernels of their
    own (quant_ops.FUSED_* off) gives the same logits, and both follow the plain-torch step."""
    from dataclasses import replace

    from pixdesk.model import quant_ops
    from pixdesk.model.pixtral import Pixtral
    from pixdesk.model.quant import QuantSpec, quantize_model
    from pixdesk.weights.tiny import TINY_ARGS

    # K of 1,024: 8 groups, so the GEMVs split K in two and the epilogues run in the last program of a block
    text = replace(TINY_ARGS.text, dim=1024, head_dim=128, n_heads=4, n_kv_heads=2, hidden_dim=1024)
    torch.manual_seed(0)
    model = Pixtral(replace(TINY_ARGS, text=text)).to("cuda", torch.bfloat16).eval()
    quantize_model(model, QuantSpec("int4"))
    model.fuse_projections()
    prefix = torch.randint(10, 2000, (40,), device="cuda")
    logits, knobs = {}, (quant_ops.FUSED_GATED, quant_ops.FUSED_ROPE)
    try:
        for fused in (True, False):
            quant_ops.FUSED_GATED = quant_ops.FUSED_ROPE = fused
            torch._dynamo.reset()
            kv_ref, kv = KVCache.for_model(model, 1, 128), KVCache.for_model(model, 1, 128)
            static = StaticDecoder(model, kv, bucket_size=64)
            with torch.inference_mode():
                for cache in (kv_ref, kv):
                    prefill(model, cache, 0, model.tok_embeddings(prefix), 0)
                slots, tokens, positions, out = torch.tensor([0]), torch.tensor([900]), torch.tensor([40]), []
                for _ in range(30):  # past the 64-key bucket
                    want = decode_step(model, kv_ref, slots, tokens.cuda(), positions)
                    got = static.step(slots, tokens, positions)
                    assert float((got - want).abs().max()) <= 0.05 * float(want.abs().max())
                    out.append(got)
                    tokens, positions = want.argmax(-1).cpu(), positions + 1
            logits[fused] = torch.cat(out)
    finally:
        quant_ops.FUSED_GATED, quant_ops.FUSED_ROPE = knobs
        torch._dynamo.reset()
    scale = float(logits[False].abs().max())
    torch.testing.assert_close(logits[True], logits[False], rtol=0, atol=1e-3 * scale)
