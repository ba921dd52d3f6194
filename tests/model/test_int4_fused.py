"""The one-row int4 GEMVs with an epilogue (model/int4_fused.py): gate|up -> silu(gate) * up, and q|k|v ->
RoPE + KV cache write, in Triton's interpreter against the unfused kernels they replace (the mma GEMV's
partials, then silu_mul's sum / rope_cache_write's), and on a GPU at the 12B model's shapes."""

from __future__ import annotations

import textwrap

import pytest
import torch

from tests.triton_interpreter import run_in_interpreter

GATED = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from pixdesk.model import int4_fused, int4_mma, quant
    g = torch.Generator().manual_seed(0)
    # H that ends mid-program (100), K splits of one group and of several, an unsplit weight
    for H, K, split in ((64, 256, 1), (100, 1024, None), (100, 1024, 1), (192, 2048, 4), (64, 512, 8)):
        lin = quant.Int4Linear.from_float(torch.randn(2 * H, K, generator=g) * K**-0.5)
        x = torch.randn(1, K, generator=g).to(torch.bfloat16)
        got = int4_fused.gated(x, lin.qweight, lin.scales, lin.mins, split=split)
        parts = int4_mma.int4_gemv_mma(x, lin.qweight, lin.scales, lin.mins).float()
        total = parts[0].clone()
        for p in parts[1:]:  # the partials' sum in split order
            total += p
        gate, up = total.to(torch.bfloat16).chunk(2, dim=-1)
        ref = (F.silu(gate.float()).to(torch.bfloat16).float() * up.float())
        assert got.shape == (1, H) and got.dtype == torch.bfloat16
        # other splits sum in another order; the interpreter rounds to bf16 its own way: a few ulps
        torch.testing.assert_close(got.float(), ref, rtol=4e-2, atol=4e-2)
        assert int(int4_fused._counters(x.device).abs().sum()) == 0  # every block's count reset
    print("ok")
    """
)

ROPE = textwrap.dedent(
    """
    import torch
    from pixdesk.engine import decode_attention  # noqa: F401  (registers rope_cache_write)
    from pixdesk.model import int4_fused, int4_mma, quant
    from pixdesk.model.rope import rope_tables, text_angles
    g = torch.Generator().manual_seed(1)
    H, HKV, D, K = 4, 2, 128, 1024
    lin = quant.Int4Linear.from_float(torch.randn((H + 2 * HKV) * D, K, generator=g) * K**-0.5)
    x = torch.randn(1, K, generator=g).to(torch.bfloat16)
    cos, sin = rope_tables(text_angles(torch.tensor([[37]]), D, 1e6))
    cos, sin = cos.reshape(1, -1).float(), sin.reshape(1, -1).float()
    positions = torch.tensor([5])
    for split in (1, 2, None):
        keys, values = torch.zeros(2, 1, 16, HKV, D, dtype=torch.bfloat16).unbind(0)
        keys, values = keys.clone(), values.clone()
        q = int4_fused.qkv_rope(x, lin.qweight, lin.scales, lin.mins, cos, sin, keys, values, positions, H,
                                split=split)
        ref_k, ref_v = torch.zeros_like(keys), torch.zeros_like(values)
        parts = int4_mma.int4_gemv_mma(x, lin.qweight, lin.scales, lin.mins)
        ref_q = torch.ops.pixdesk.rope_cache_write(parts, cos, sin, ref_k, ref_v, positions, H)
        assert q.shape == (1, H, D) and q.dtype == torch.bfloat16
        for got, ref in ((q, ref_q), (keys, ref_k), (values, ref_v)):
            torch.testing.assert_close(got.float(), ref.float(), rtol=2e-2, atol=2e-2)
        assert keys[0, 5].abs().sum() > 0 and keys[0, 4].abs().sum() == 0  # only position 5 written
        assert int(int4_fused._counters(x.device).abs().sum()) == 0
    print("ok")
    """
)


REDUCED = textwrap.dedent(
    """
    import torch
    from pixdesk.model import int4_fused, int4_mma, int4_triton, quant
    g = torch.Generator().manual_seed(3)
    for n, k, split in ((200, 1024, 4), (130, 2048, 8), (64, 256, 1)):  # a block ending mid-program
        lin = quant.Int4Linear.from_float(torch.randn(n, k, generator=g))
        x = torch.randn(1, k, generator=g).to(torch.bfloat16)
        got = int4_fused.reduced(x, lin.qweight, lin.scales, lin.mins, split=split)
        int4_triton.ONE_ROW_SPLITS[(n, k)] = split
        parts = int4_mma.int4_gemv_mma(x, lin.qweight, lin.scales, lin.mins).float()
        total = parts[0].clone()
        for p in parts[1:]:  # the split order
            total += p
        assert got.shape == (1, 1, n) and got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float()[0], total.to(torch.bfloat16).float(), rtol=2e-2, atol=2e-2)
        assert int(int4_fused._counters(x.device).abs().sum()) == 0
    print("ok")
    """
)


def test_reduced_gemv_in_the_interpreter():
    assert run_in_interpreter(REDUCED).startswith("ok")


def test_gated_gemv_in_the_interpreter():
    assert run_in_interpreter(GATED).startswith("ok")


def test_qkv_rope_gemv_in_the_interpreter():
    assert run_in_interpreter(ROPE).startswith("ok")


def test_qkv_rope_refuses_other_head_sizes():
    pytest.importorskip("triton")
    from pixdesk.model import int4_fused, quant

    lin = quant.Int4Linear.from_float(torch.randn(8 * 64, 256))
    keys = torch.zeros(1, 4, 2, 64, dtype=torch.bfloat16)
    x = torch.zeros(1, 256, dtype=torch.bfloat16)
    trig = torch.zeros(1, 32)
    with pytest.raises(ValueError, match="heads of 128"):
        int4_fused.qkv_rope(x, lin.qweight, lin.scales, lin.mins, trig, trig, keys, keys, torch.zeros(1), 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused kernels need a CUDA device")
def test_fused_epilogues_on_cuda_equal_the_unfused_kernels():
    from pixdesk.engine import decode_attention  # noqa: F401
    from pixdesk.model import int4_fused, int4_mma, quant
    from pixdesk.model.silu_mul import silu_mul_partials

    g = torch.Generator().manual_seed(2)
    gate_up = quant.Int4Linear.from_float(torch.randn(2 * 14336, 5120, generator=g) * 5120**-0.5).cuda()
    qkv = quant.Int4Linear.from_float(torch.randn(6144, 5120, generator=g) * 5120**-0.5).cuda()
    x = torch.randn(1, 5120, generator=g).to(torch.bfloat16).cuda()
    for split in (None, 1):
        got = int4_fused.gated(x, gate_up.qweight, gate_up.scales, gate_up.mins, split=split)
        if split is None:  # same splits, same order of sums: the same bits
            parts = int4_mma.int4_gemv_mma(x, gate_up.qweight, gate_up.scales, gate_up.mins)
            assert torch.equal(got, silu_mul_partials(parts, x.dtype))
            summed = int4_fused.reduced(x, gate_up.qweight, gate_up.scales, gate_up.mins)  # summed in-kernel
            assert torch.equal(silu_mul_partials(summed, x.dtype), got)
    cos, sin = torch.rand(2, 1, 64, device="cuda").unbind(0)
    keys, values = torch.zeros(2, 1, 64, 8, 128, dtype=torch.bfloat16, device="cuda").unbind(0)
    ref_k, ref_v = keys.clone(), values.clone()
    positions = torch.tensor([9], device="cuda")
    q = int4_fused.qkv_rope(x, qkv.qweight, qkv.scales, qkv.mins, cos, sin, keys, values, positions, 32)
    parts = int4_mma.int4_gemv_mma(x, qkv.qweight, qkv.scales, qkv.mins)
    ref_q = torch.ops.pixdesk.rope_cache_write(parts, cos, sin, ref_k, ref_v, positions, 32)
    assert torch.equal(q, ref_q) and torch.equal(keys, ref_k) and torch.equal(values, ref_v)
    total = parts[0].clone()
    for p in parts[1:]:  # the split order
        total += p
    got = int4_fused.reduced(x, qkv.qweight, qkv.scales, qkv.mins)  # the same splits: the same sum
    assert torch.equal(got[0], total.to(x.dtype))
    assert int(int4_fused._counters(x.device).abs().sum()) == 0
