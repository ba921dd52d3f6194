"""The split-key decode-attention kernel (engine/decode_attention.py) in Triton's interpreter on the CPU:
against the matmul form, alone and inside the static decode step."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.triton_interpreter import run_in_interpreter

ROOT = Path(__file__).resolve().parents[2]

CHECK = textwrap.dedent(
    """
    import torch
    import pixdesk.engine.decode_attention as da
    from pixdesk.engine.decode_attention import decode_attention
    from pixdesk.model.layers import gqa_decode

    g = torch.Generator().manual_seed(0)
    cases = [(3, 601, 2, 16, 8, [10, 600, 1], 512), (1, 300, 8, 128, 32, [257], 256),
             (2, 70, 1, 32, 4, [64, 3], 64)]
    # the slice length chosen from the grid, and each fixed one (a different number of partials to merge)
    for split in (None, *da.SPLITS):
        da.FIXED_SPLIT = split
        for B, T, Hkv, D, H, lens, n_keys in cases:
            k, v = torch.randn(B, T, Hkv, D, generator=g), torch.randn(B, T, Hkv, D, generator=g)
            q = torch.randn(B, 1, H, D, generator=g)
            lengths = torch.tensor(lens)
            mask = torch.arange(n_keys)[None, :] < lengths[:, None]
            ref = gqa_decode(q, k[:, :n_keys], v[:, :n_keys], mask)[:, 0]
            out = decode_attention(q[:, 0], k, v, lengths, n_keys)
            assert out.shape == ref.shape and float((out - ref).abs().max()) < 1e-5, (B, T, lens, split)
    da.FIXED_SPLIT = None
    grids = [(8, 4352), (64, 4352), (8, 300)]  # (rows x KV heads, keys): 1 slot, 8 slots, a short context
    assert [da.split_keys(n, keys, 132) for n, keys in grids] == [64, 256, 64]

    # rows mapped to slots: four rows of slot 1, each seeing the keys before its own position
    k, v = torch.randn(3, 300, 2, 16, generator=g), torch.randn(3, 300, 2, 16, generator=g)
    q = torch.randn(4, 1, 8, 16, generator=g)
    lengths, slots = torch.tensor([1, 130, 131, 257]), torch.tensor([1, 1, 1, 1])
    mask = torch.arange(256)[None, :] < lengths[:, None]
    ref = gqa_decode(q, k[slots, :256], v[slots, :256], mask)[:, 0]
    out = decode_attention(q[:, 0], k, v, lengths, 256, slots)
    assert float((out - ref).abs().max()) < 1e-5

    # warm-up launches: one per key bucket, one key a row, on a layer's cache as the step uses it
    from pixdesk.engine.static import key_buckets
    assert key_buckets(256, 600) == [256, 512, 600] and key_buckets(512, 512) == [512]
    assert da.warm_variants(k, v, 8, 4, key_buckets(128, 299), row_slots=True) == 3
    assert da.warm_variants(k, v, 8, 3, [64, 299], row_slots=False) == 2

    # inside the static step: the same logits as the matmul form
    from pixdesk.engine.cache import KVCache
    from pixdesk.engine.static import StaticDecoder
    from pixdesk.weights.checkpoint import load_checkpoint
    from pixdesk.weights.tiny import make_tiny_checkpoint
    import tempfile

    model = load_checkpoint(make_tiny_checkpoint(tempfile.mkdtemp(), layout="native", seed=0)).model
    model.fuse_projections()
    outs = []
    for kernel in (False, True):
        kv = KVCache.for_model(model, 3, 600)
        for layer in range(len(kv.k)):
            kv.k[layer].normal_(generator=torch.Generator().manual_seed(layer))
            kv.v[layer].normal_(generator=torch.Generator().manual_seed(100 + layer))
        sd = StaticDecoder(model, kv, compile=False, bucket_size=256, kernel=kernel)
        with torch.inference_mode():
            outs.append(sd.step(torch.tensor([0, 2]), torch.tensor([5, 7]), torch.tensor([300, 17])))
    assert float((outs[0] - outs[1]).abs().max()) < 1e-4, float((outs[0] - outs[1]).abs().max())
    print("ok")
    """
)


def test_decode_attention_kernel_in_the_interpreter():
    assert run_in_interpreter(CHECK).strip().endswith("ok")


ROPE_WRITE = textwrap.dedent(
    """
    import torch
    import pixdesk.engine.decode_attention as da
    from pixdesk.model.layers import gqa_decode
    from pixdesk.model.rope import apply_rope, rope_tables, text_angles

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        B, T, Hkv, D, H, n_keys, S = 3, 300, 2, 16, 8, 256, 2  # S: the q|k|v projection's K-split partials
        scratch = T - 1
        kc, vc = (torch.randn(B, T, Hkv, D, generator=g).to(dtype) for _ in range(2))
        parts = torch.randn(S, B, (H + 2 * Hkv) * D, generator=g)
        positions = torch.tensor([100, scratch, 255])  # slot 1 idle, parked on the spare position
        cos, sin = rope_tables(text_angles(positions[:, None], D, 1e6))
        ka, va = kc.clone(), vc.clone()
        q_got = da.rope_cache_write(parts, cos.reshape(B, -1), sin.reshape(B, -1), ka, va, positions, H)
        qkv = parts.sum(0).to(dtype)
        q, k, v = qkv.split([H * D, Hkv * D, Hkv * D], -1)
        q, k = apply_rope(q.view(B, 1, H, D), cos, sin), apply_rope(k.view(B, 1, Hkv, D), cos, sin)
        kb, vb = kc.clone(), vc.clone()
        kb[torch.arange(B), positions] = k[:, 0]
        vb[torch.arange(B), positions] = v.view(B, Hkv, D)
        # bf16: a rounding may differ (FMA in RoPE's products; the interpreter's fp32 -> bf16 conversion),
        # against the largest value (a rotated pair's sum can cancel, where one rounding is many ulps)
        tol = 0 if dtype == torch.float32 else 2**-6
        for got, want in ((q_got, q[:, 0]), (ka, kb), (va, vb)):
            assert float((got.float() - want.float()).abs().max()) <= tol * float(want.float().abs().max())
        lengths = torch.where(positions == scratch, 1, positions + 1)
        out = da.decode_attention(q_got, ka, va, lengths, n_keys)
        mask = torch.arange(n_keys)[None, :] < lengths[:, None]
        ref = gqa_decode(q.float(), kb[:, :n_keys].float(), vb[:, :n_keys].float(), mask)[:, 0]
        err = float((out.float() - ref).abs().max())
        assert err <= (1e-5 if dtype == torch.float32 else 2e-2 * float(ref.abs().max())), (dtype, err)
    print("ok")
    """
)


def test_rope_and_cache_write_then_attention_in_the_interpreter():
    """The decode step's kernel between the q|k|v projection and attention: the partials' sum, RoPE and the
    cache write, then attention; an idle row (on the spare position) reads one key."""
    assert run_in_interpreter(ROPE_WRITE).strip().endswith("ok")


def test_split_kernel_compiles_for_sm90_in_every_form():
    """The split kernel compiled for an H100/H200 target on the CPU (Triton ships ptxas): the interpreter does
    not check types, so a loop variable that changed from int32 to int64 passed there and failed to compile
    on the GPU (the engine then fell back to the eager step: 9 tok/s, session 13)."""
    pytest.importorskip("triton")
    import itertools

    from bench import sass
    from pixdesk.engine import decode_attention as da

    names = da._partial.arg_names
    ptrs = {"q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16", "len_ptr": "*i64", "slot_ptr": "*i64",
            "o_ptr": "*fp32", "m_ptr": "*fp32", "l_ptr": "*fp32"}  # fmt: skip
    scalars = {"n_keys": "i32", "n_splits": "i32", "sm_scale": "fp32", "stride_kb": "i32", "stride_kt": "i32"}
    sig = {n: {**ptrs, **scalars}.get(n, "constexpr") for n in names}
    for split, row_slots in itertools.product((64, 256), (False, True)):
        consts = dict(HKV=8, G=4, GP=16, D=128, SPLIT=split, BLOCK_S=64, ROW_SLOTS=row_slots, USE_PDL=True)
        sass.compile_kernel(da._partial, sig, consts, ("stride_kb", "stride_kt"), 90, 4)
    merge = {"o_ptr": "*fp32", "m_ptr": "*fp32", "l_ptr": "*fp32", "out_ptr": "*bf16", "n_splits": "i32"}
    merge = {n: merge.get(n, "constexpr") for n in da._combine.arg_names}
    for dc in (32, 128):  # a merge program over part of a head's columns, and over all of them
        sass.compile_kernel(da._combine, merge, dict(D=128, DC=dc, NSP=128, USE_PDL=True), (), 90, 4)
