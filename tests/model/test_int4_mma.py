"""The one-row int4 GEMV on the tensor cores (model/int4_mma.py): its algebra in Triton's interpreter (the
CPU has no mma, so there the same sums run as plain tensor ops), and the real kernel on a GPU."""

from __future__ import annotations

import textwrap

import pytest
import torch

from tests.triton_interpreter import run_in_interpreter

CHECK = textwrap.dedent(
    """
    import torch
    from pixdesk.model import int4_mma, quant, quant_ops
    g = torch.Generator().manual_seed(0)
    worst, splits = 0.0, set()
    kernel = int4_mma._gemv1_mma
    loops = {(c.kwargs["PREFETCH"], c.kwargs["STAGES"] > 1): c for c in kernel.configs}
    assert len(loops) == 3, loops  # the plain loop, the register prefetch, the pipelined one
    # rows that end mid-program (40, 136), several groups a split, and K splits (the interpreter has 4 SMs)
    shapes = ((48, 256), (40, 384), (136, 1280), (8, 2048), (24, 4096))
    cases = zip(shapes * len(loops), [c for c in loops.values() for _ in shapes])
    for i, ((n, k), config) in enumerate(cases):
        kernel.configs, kernel.cache = [config], {}
        w = torch.randn(n, k, generator=g)
        x = torch.randn(1, k, generator=g).to(torch.bfloat16)
        lin = quant.Int4Linear.from_float(w)
        if i % 2:  # every loop form with scales and minimums interleaved (one word a row and group) too
            lin.interleave_scales()
            assert quant_ops.interleaved_scales(lin.scales, lin.mins)
        parts = int4_mma.int4_gemv_mma(x, lin.qweight, lin.scales, lin.mins)
        splits.add(parts.shape[0])
        y = parts.float().sum(0).to(x.dtype)
        ref = x.float() @ quant.dequantize(lin).T
        assert y.shape == (1, n) and y.dtype == torch.bfloat16
        worst = max(worst, float((y.float() - ref).abs().max() / ref.abs().max()))
    assert worst < 1e-2, worst
    assert 1 in splits and len(splits) >= 2, splits
    print("ok", worst, sorted(splits), len(loops))
    """
)


def test_int4_mma_gemv_algebra_in_the_interpreter():
    assert run_in_interpreter(CHECK).startswith("ok")


def test_int4_mma_gemv_rejects_what_it_does_not_take():
    from pixdesk.model import int4_mma

    x = torch.zeros(2, 256, dtype=torch.bfloat16)
    assert not int4_mma.supported(x, 128)
    assert not int4_mma.supported(x[:1].float(), 128)
    assert not int4_mma.supported(x[:1], 64)
    assert int4_mma.supported(x[:1], 128)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the mma kernel needs a CUDA device")
@pytest.mark.parametrize("n, k", [(6144, 5120), (5120, 4096), (28672, 5120), (5120, 14336), (200, 1280)])
def test_int4_mma_gemv_on_cuda_equals_the_dequantized_product(n, k):
    from pixdesk.model import int4_mma, quant

    g = torch.Generator().manual_seed(n + k)
    w = torch.randn(n, k, generator=g)
    lin = quant.Int4Linear.from_float(w).to("cuda")
    x = torch.randn(1, k, generator=g).to(torch.bfloat16).cuda()
    parts = int4_mma.int4_gemv_mma(x, lin.qweight, lin.scales, lin.mins)
    y = parts.float().sum(0)
    ref = x.float() @ quant.dequantize(lin).float().T
    err = float((y - ref).abs().max() / ref.abs().max())
    assert err < 4e-3, err  # fp32 sums of exact products; the bf16 partials of an unsplit weight round once


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the mma kernel needs a CUDA device")
def test_int4_gated_on_cuda_equals_the_unfused_form():
    import torch.nn.functional as F

    from pixdesk.model import quant

    g = torch.Generator().manual_seed(1)
    lin = quant.Int4Linear.from_float(torch.randn(2 * 14336, 5120, generator=g) * 5120**-0.5).to("cuda")
    x = torch.randn(1, 5120, generator=g).to(torch.bfloat16).cuda()
    got = lin.gated(x)
    parts = lin.partials(x).float()
    total = parts[0].clone()
    for p in parts[1:]:  # the kernel's order, so the sums round alike
        total += p
    gate, up = total.to(x.dtype).chunk(2, dim=-1)
    torch.testing.assert_close(got.float(), (F.silu(gate) * up).float(), rtol=2**-6, atol=1e-2)


def test_the_pinned_configs_are_among_the_autotuners():
    """int4_mma.PINNED names configs the autotuner offers too (so the interpreter check above covers them)."""
    pytest.importorskip("triton")
    from pixdesk.model import int4_mma

    offered = {(c.num_warps, c.kwargs["PREFETCH"], c.kwargs["STAGES"]) for c in int4_mma._configs()}
    assert int4_mma.PINNED and set(int4_mma.PINNED.values()) <= offered


def test_pinned_launch_carries_the_register_budget_on_hopper_only(monkeypatch):
    """int4_mma.pinned_launch: the pinned (warps, prefetch, stages) as launch arguments, plus maxnreg where
    MAXNREG names the shape; None on another GPU or an unpinned shape (the autotuner decides)."""
    pytest.importorskip("triton")
    from pixdesk.model import int4_mma

    monkeypatch.setattr(int4_mma, "_INTERPRET", False)
    arch = {"cap": (9, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: arch["cap"])
    dev = torch.device("cuda")
    assert int4_mma.pinned_launch(6144, 5120, dev) == {"PREFETCH": True, "STAGES": 1, "num_warps": 8,
                                                       "maxnreg": int4_mma.MAXNREG[(6144, 5120)]}  # fmt: skip
    assert "maxnreg" not in int4_mma.pinned_launch(28672, 5120, dev)
    assert int4_mma.pinned_launch(1024, 5120, dev) is None
    arch["cap"] = (8, 9)
    assert int4_mma.pinned_launch(6144, 5120, dev) is None
