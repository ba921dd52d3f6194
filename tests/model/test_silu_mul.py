"""silu(gate) * up from gate|up K-split partials in one kernel (model/silu_mul.py), and the int4 gate|up
op that uses it (quant_ops.int4_gated): in Triton's interpreter, against the unfused torch form."""

from __future__ import annotations

import textwrap

import pytest
import torch
import torch.nn.functional as F

from pixdesk.model import quant_ops
from pixdesk.model.quant import Int4Linear, dequantize
from tests.triton_interpreter import run_in_interpreter

CHECK = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from pixdesk.model import silu_mul
    g = torch.Generator().manual_seed(0)
    for S, H in ((1, 48), (4, 700), (8, 1536)):  # one part, a column block that ends mid-program, 8 parts
        parts = torch.randn(S, 1, 2 * H, generator=g) * 3
        dtype = torch.bfloat16 if S == 1 else torch.float32
        got = silu_mul.silu_mul_partials(parts.to(dtype), torch.bfloat16)
        total = parts.to(dtype)[0].float()
        for p in parts.to(dtype)[1:]:  # the kernel's order, so the sums round alike
            total += p.float()
        gate, up = total.to(torch.bfloat16).chunk(2, dim=-1)
        ref = F.silu(gate) * up
        assert got.shape == (1, H) and got.dtype == torch.bfloat16
        # The interpreter rounds fp32 -> bf16 its own way (not always to nearest), SiLU's exp may be an ulp
        # apart: a few bf16 ulps, amplified where SiLU is steep. A wrong index or a missed partial is O(1).
        torch.testing.assert_close(got.float(), ref.float(), rtol=4e-2, atol=5e-2)
    print("ok")
    """
)


def test_silu_mul_of_partials_in_the_interpreter():
    assert run_in_interpreter(CHECK).startswith("ok")


def test_silu_mul_rejects_several_rows():
    pytest.importorskip("triton")
    from pixdesk.model import silu_mul

    with pytest.raises(ValueError, match="one row"):
        silu_mul.silu_mul_partials(torch.zeros(2, 3, 8), torch.bfloat16)


def test_int4_gated_is_for_one_cuda_row_only():
    lin = Int4Linear.from_float(torch.randn(64, 256))
    x = torch.randn(1, 256, dtype=torch.bfloat16)
    assert lin.gated(x) is None  # CPU: the module's own forward, then SiLU and the product
    out = quant_ops.int4_gated_op(x, lin.qweight, lin.scales, lin.mins, lin.group_size)  # the op's fallback
    gate, up = F.linear(x, dequantize(lin).to(x.dtype)).chunk(2, dim=-1)
    torch.testing.assert_close(out, F.silu(gate) * up)
