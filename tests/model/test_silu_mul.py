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


ROWS = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from pixdesk.model import silu_mul
    g = torch.Generator().manual_seed(0)
    for M, H in ((3, 48), (5, 1500), (2, 2048)):  # a column block that ends mid-program, whole blocks
        gate_up = (torch.randn(M, 2 * H, generator=g) * 3).to(torch.bfloat16)
        got = silu_mul.silu_mul_rows(gate_up)
        gate, up = gate_up.chunk(2, dim=-1)
        ref = F.silu(gate) * up
        assert got.shape == (M, H) and got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), ref.float(), rtol=4e-2, atol=5e-2)  # as CHECK's tolerance
    print("ok")
    """
)


def test_silu_mul_of_rows_in_the_interpreter():
    assert run_in_interpreter(ROWS).startswith("ok")


def test_the_vision_layers_take_the_rows_kernel_only_on_a_gpu(tiny_dir):
    from pixdesk.weights.checkpoint import load_checkpoint

    model = load_checkpoint(tiny_dir).model.fuse_projections()
    vision = model.vision_encoder.transformer.layers
    assert hasattr(vision[0].feed_forward, "w13") and hasattr(vision[0].attention, "wqkv")
    assert not any(layer.feed_forward.rows_kernel for layer in [*vision, *model.layers])  # CPU: plain torch


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the rows kernel needs a CUDA device")
def test_fused_vision_encoder_on_a_gpu_equals_the_unfused_one(tiny_dir):
    from pixdesk.model.regions import CompiledBlocks
    from pixdesk.weights.checkpoint import load_checkpoint

    a = load_checkpoint(tiny_dir, dtype=torch.bfloat16, device="cuda").model
    b = load_checkpoint(tiny_dir, dtype=torch.bfloat16, device="cuda").model.fuse_projections()
    assert all(layer.feed_forward.rows_kernel for layer in b.vision_encoder.transformer.layers)
    p = a.args.vision.patch_size
    pixels = torch.randn(3, 12 * p, 20 * p, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = a.encode_images([pixels]).float()
        for blocks in (None, CompiledBlocks()):  # eager and inside the compiled regions
            got = b.encode_images([pixels], blocks).float()
            assert float((got - ref).abs().max()) <= 3e-2 * float(ref.abs().max())


def test_rows_kernel_compiles_for_sm90_with_16_byte_loads():
    """Compiled for an H100/H200 on the CPU (Triton ships ptxas): types the interpreter does not check, and
    the vector width that makes it a streaming kernel."""
    pytest.importorskip("triton")
    from bench import sass
    from pixdesk.model import silu_mul

    sig = {"gu_ptr": "*bf16", "out_ptr": "*bf16", "H": "i32", "row_stride": "i32", "BLOCK": "constexpr"}
    consts, hinted = {"BLOCK": silu_mul.ROWS_BLOCK}, ("H", "row_stride")
    ptx = sass.compile_kernel(silu_mul._silu_mul_rows, sig, consts, hinted, 90, 4).asm["ptx"]
    assert "ld.global.v4.b32" in ptx and "st.global.v4.b32" in ptx
