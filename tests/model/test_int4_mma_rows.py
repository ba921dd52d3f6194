"""The int4 tensor-core GEMV for 2..8 rows (model/int4_mma_rows.py): the algebra in Triton's interpreter, and
the real kernel (its mma columns one x row each) on a GPU, against the dequantized product."""

from __future__ import annotations

import textwrap

import pytest
import torch

from tests.triton_interpreter import run_in_interpreter

CHECK = textwrap.dedent(
    """
    import torch
    from pixdesk.model import int4_mma_rows, quant
    g = torch.Generator().manual_seed(0)
    worst, splits = 0.0, set()
    for m, (n, k) in zip((2, 3, 8, 5), ((48, 256), (136, 1280), (40, 2048), (200, 512))):
        lin = quant.Int4Linear.from_float(torch.randn(n, k, generator=g))
        x = torch.randn(m, k, generator=g).to(torch.bfloat16)
        parts = int4_mma_rows.int4_gemv_rows_mma(x, lin.qweight, lin.scales, lin.mins)
        splits.add(parts.shape[0])
        y = parts.float().sum(0)
        ref = x.float() @ quant.dequantize(lin).float().T
        assert y.shape == (m, n), y.shape
        worst = max(worst, float((y - ref).abs().max() / ref.abs().max()))
    assert worst < 1e-2, worst
    print("ok", worst, sorted(splits))
    """
)


def test_int4_rows_mma_algebra_in_the_interpreter():
    assert run_in_interpreter(CHECK).startswith("ok")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the mma kernel needs a CUDA device")
@pytest.mark.parametrize("m", [2, 5, 8])
@pytest.mark.parametrize("n, k", [(6144, 5120), (5120, 14336), (200, 1280)])
def test_int4_rows_mma_on_cuda_equals_the_dequantized_product(m, n, k):
    from pixdesk.model import int4_mma_rows, quant

    g = torch.Generator().manual_seed(n + k + m)
    lin = quant.Int4Linear.from_float(torch.randn(n, k, generator=g)).to("cuda")
    x = torch.randn(m, k, generator=g).to(torch.bfloat16).cuda()
    y = int4_mma_rows.int4_gemv_rows_mma(x, lin.qweight, lin.scales, lin.mins).float().sum(0)
    ref = x.float() @ quant.dequantize(lin).float().T
    err = float((y - ref).abs().max() / ref.abs().max())
    assert err < 4e-3, err
