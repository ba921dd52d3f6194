"""int4 scales and minimums interleaved (Int4Linear.interleave_scales: one bf16x2 word a row and group, what
prepare_for_device does on a GPU): every int4 path reads them through strides or as one word, and gives
exactly what it gives on the separate buffers."""

from __future__ import annotations

import textwrap

import pytest
import torch

from tests.triton_interpreter import run_in_interpreter


def _pair(n: int, k: int, seed: int = 0):
    from pixdesk.model import quant

    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * k**-0.5
    lin, inter = quant.Int4Linear.from_float(w), quant.Int4Linear.from_float(w)
    inter.interleave_scales()
    return lin, inter


def test_interleaving_keeps_the_values_and_is_idempotent():
    from pixdesk.model import quant, quant_ops

    lin, inter = _pair(48, 256)
    assert not quant_ops.interleaved_scales(lin.scales, lin.mins)
    assert quant_ops.interleaved_scales(inter.scales, inter.mins)
    assert inter.scales.shape == lin.scales.shape and inter.scales.stride() == (2, 2 * 48)
    torch.testing.assert_close(inter.scales, lin.scales, rtol=0, atol=0)
    torch.testing.assert_close(inter.mins, lin.mins, rtol=0, atol=0)
    ptr = inter.scales.data_ptr()
    inter.interleave_scales()
    assert inter.scales.data_ptr() == ptr
    torch.testing.assert_close(quant.dequantize(inter), quant.dequantize(lin), rtol=0, atol=0)
    x = torch.randn(3, 256)
    torch.testing.assert_close(inter(x), lin(x), rtol=0, atol=0)  # the CPU paths
    x1 = torch.randn(1, 256)
    torch.testing.assert_close(inter(x1), lin(x1), rtol=0, atol=0)


KERNELS = textwrap.dedent(
    """
    import torch
    from pixdesk.model import int4_mma, int4_mma_rows, int4_triton, int4_fused, quant

    def pair(n, k):
        w = torch.randn(n, k, generator=torch.Generator().manual_seed(n + k)) * k**-0.5
        lin, inter = quant.Int4Linear.from_float(w), quant.Int4Linear.from_float(w)
        inter.interleave_scales()
        return lin, inter

    def same(f, lin, inter):
        a = f(lin.qweight, lin.scales, lin.mins)
        b = f(inter.qweight, inter.scales, inter.mins)
        assert torch.equal(a, b), (a - b).abs().max()

    lin, inter = pair(136, 1280)
    x1 = torch.randn(1, 1280).to(torch.bfloat16)
    x12 = torch.randn(12, 1280).to(torch.bfloat16)
    x4 = torch.randn(4, 1280).to(torch.bfloat16)
    same(lambda *w: int4_mma.int4_gemv_mma(x1, *w), lin, inter)
    same(lambda *w: int4_fused.reduced(x1, *w), lin, inter)
    same(lambda *w: int4_mma_rows.int4_gemv_rows_mma(x4, *w), lin, inter)
    same(lambda *w: int4_triton.int4_gemv(x1, *w, 128), lin, inter)
    same(lambda *w: int4_triton.int4_gemv(x12, *w, 128), lin, inter)
    same(lambda *w: int4_triton.int4_dequantize(*w, 128, torch.bfloat16), lin, inter)
    print("ok")
    """
)


def test_the_int4_kernels_read_interleaved_scales_alike_in_the_interpreter():
    assert run_in_interpreter(KERNELS).startswith("ok")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the int4 kernels need a CUDA device")
def test_the_int4_kernels_read_interleaved_scales_alike_on_cuda():
    from pixdesk.model import int4_fused, int4_mma, int4_mma_rows, quant_ops

    for n, k in ((28672, 5120), (5120, 14336), (6144, 5120)):
        lin, inter = _pair(n, k, seed=n)
        lin, inter = lin.cuda(), inter.cuda()
        inter.interleave_scales()  # .cuda() copies each buffer on its own: pair them again on the device
        assert quant_ops.interleaved_scales(inter.scales, inter.mins)
        paths = ((1, int4_mma.int4_gemv_mma), (1, int4_fused.reduced), (4, int4_mma_rows.int4_gemv_rows_mma),
                 (12, lambda x, *w: quant_ops.int4_linear_partials(x, *w, 128)),
                 (300, lambda x, *w: quant_ops.int4_linear_partials(x, *w, 128)))  # fmt: skip
        for rows, f in paths:
            x = torch.randn(rows, k, device="cuda").to(torch.bfloat16)
            a = f(x, lin.qweight, lin.scales, lin.mins)
            b = f(x, inter.qweight, inter.scales, inter.mins)
            assert torch.equal(a, b), (n, k, rows, (a.float() - b.float()).abs().max())
