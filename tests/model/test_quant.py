"""Weight-only int8 / int4: formats, accuracy bounds on Gaussian weights, CPU kernels, fusion, and the
Triton decode kernels run in Triton's interpreter (CPU) when Triton is installed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pixdesk.model import quant_ops
from pixdesk.model.quant import (
    Int4Linear,
    Int8Linear,
    QuantSpec,
    concat_linears,
    decoder_linear_names,
    dequantize,
    quantize_int4,
    quantize_int8,
    quantize_model,
    unpack_int4,
)
from pixdesk.weights.tiny import random_state_dict
from tests.triton_interpreter import run_in_interpreter

ROOT = Path(__file__).resolve().parents[2]
BOUNDS = {"int8": 0.999, "int4": 0.99}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0))


def test_int8_format_reconstructs_within_half_a_step():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    q, s = quantize_int8(w)
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and q.abs().max() == 127
    err = (q.float() * s[:, None] - w).abs()
    assert bool((err <= s[:, None] / 2 + 1e-7).all())


def test_int4_layout_interleaves_each_group_across_its_words():
    """Group 16 = 2 int32 words: nibble i of word w holds k = 2i + w (quant.py draws the layout)."""
    w = torch.arange(16.0).repeat(3, 8)  # every group of 16 spans 0..15, so q == w exactly
    packed, s, m = quantize_int4(w, group=16)
    assert packed.shape == (3, 64) and packed.dtype == torch.uint8
    words = packed[0, :8].view(torch.int32)  # little-endian: nibble i at bits 4i
    nibbles = [[(int(words[w]) >> (4 * i)) & 0xF for i in range(8)] for w in range(2)]
    assert nibbles == [[0, 2, 4, 6, 8, 10, 12, 14], [1, 3, 5, 7, 9, 11, 13, 15]]
    assert torch.equal(unpack_int4(packed, 16).float(), w)
    assert torch.allclose(s.float(), torch.ones_like(s.float())) and not m.float().any()


@pytest.mark.parametrize("group", [16, 32, 64, 128])
def test_int4_pack_and_unpack_are_inverse(group):
    from pixdesk.model.quant_ops import pack_int4

    q = torch.randint(0, 16, (5, 256), generator=torch.Generator().manual_seed(7), dtype=torch.uint8)
    assert torch.equal(unpack_int4(pack_int4(q, group), group), q)


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 7, 40])
def test_output_cosine_on_gaussian_weights(mode, dtype, rows):
    g = torch.Generator().manual_seed(1)
    w, x = torch.randn(384, 1024, generator=g), torch.randn(rows, 1024, generator=g)
    lin = Int8Linear.from_float(w) if mode == "int8" else Int4Linear.from_float(w)
    y = lin(x.to(dtype))
    assert y.dtype == dtype and y.shape == (rows, 384)
    assert cosine(y, F.linear(x, w)) >= BOUNDS[mode]
    # the product with the dequantized weight, up to rounding: decode rows (<= 16) go through torch's CPU
    # kernels with bf16 activations, longer inputs multiply by the dequantized weight in the model's dtype
    ref = F.linear(x, dequantize(lin))
    tol = 1e-5 if dtype == torch.float32 and rows > 16 else 1e-2
    assert float((y.float() - ref).abs().max() / ref.abs().max()) < tol


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_every_tiny_decoder_linear_holds_the_cosine_bound(tiny_dir, mode):
    """The tiny model's own (Gaussian) decoder weights, quantized as a load would (int4: group 16 for its
    input sizes 48/64/96); the vision encoder stays float."""
    from pixdesk.weights.checkpoint import load_checkpoint

    model = load_checkpoint(tiny_dir).model
    floats = {n: model.get_submodule(n).weight.detach().clone() for n in decoder_linear_names(model)}
    quantize_model(model, QuantSpec(mode))
    g = torch.Generator().manual_seed(2)
    for name, w in floats.items():
        lin = model.get_submodule(name)
        assert isinstance(lin, Int8Linear if mode == "int8" else Int4Linear), name
        x = torch.randn(5, w.shape[1], generator=g)
        assert cosine(lin(x), F.linear(x, w)) >= BOUNDS[mode], name
    assert isinstance(model.vision_encoder.transformer.layers[0].attention.wq, nn.Linear)


def test_int4_group_size_follows_the_model():
    assert QuantSpec("int4").for_inputs([5120, 4096, 14336]).group_size == 128
    assert QuantSpec("int4").for_inputs([48, 64, 96]).group_size == 16
    with pytest.raises(ValueError, match="multiples of 16"):
        QuantSpec("int4").for_inputs([40])


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_fused_projection_equals_the_separate_ones(mode):
    g = torch.Generator().manual_seed(3)
    parts = [torch.randn(n, 256, generator=g) for n in (64, 32, 32)]
    mods = [Int8Linear.from_float(w) if mode == "int8" else Int4Linear.from_float(w) for w in parts]
    x = torch.randn(3, 256, generator=g)
    fused = concat_linears(mods)
    assert torch.allclose(fused(x), torch.cat([m(x) for m in mods], dim=-1), atol=1e-5)


def test_state_dict_of_a_quantized_linear_is_its_format():
    lin = Int4Linear.from_float(torch.randn(32, 256))
    assert {k: v.dtype for k, v in lin.state_dict().items()} == {
        "qweight": torch.uint8, "scales": torch.bfloat16, "mins": torch.bfloat16}  # fmt: skip


def test_int4_buffers_are_stored_group_major():
    """Each group of consecutive rows is one contiguous block (the decode GEMVs' coalesced loads), however
    the buffers were made: quantized, fused, moved; the values are the row-major ones."""
    w = torch.randn(48, 256)
    lin = Int4Linear.from_float(w, 32)
    q, s, m = quantize_int4(w, 32)
    assert quant_ops.is_group_major(lin.qweight, lin.scales)
    assert quant_ops.is_group_major(lin.qweight, lin.mins)
    assert lin.qweight.shape == (48, 8, 16) and torch.equal(lin.qweight.reshape(48, 128), q)
    assert torch.equal(lin.scales, s) and torch.equal(lin.mins, m)
    fused = concat_linears([lin, Int4Linear.from_float(torch.randn(16, 256), 32)])
    assert quant_ops.is_group_major(fused.qweight, fused.scales) and fused.qweight.shape == (64, 8, 16)
    moved = fused.to("meta")  # Module.to keeps the strides (as to("cuda") does)
    assert quant_ops.is_group_major(moved.qweight, moved.scales)
    assert quant_ops.is_group_major(*quant_ops.group_major(q, s, m)[:2])


KERNEL_CHECK = textwrap.dedent(
    """
    import torch
    from pixdesk.model import int4_triton, quant, quant_triton as qt
    qt.INT8_SPLIT_K = True  # the default, set here so the K-split partials are always checked
    g = torch.Generator().manual_seed(0)
    worst, splits = 0.0, set()
    for rows in (1, 3, 8, 16):
        for n, k in ((48, 256), (40, 384), (24, 1280), (8, 2048)):
            w = torch.randn(n, k, generator=g)
            x = torch.randn(rows, k, generator=g).to(torch.bfloat16)
            for lin in (quant.Int8Linear.from_float(w), quant.Int4Linear.from_float(w)):
                ref = x.float() @ quant.dequantize(lin).T
                if isinstance(lin, quant.Int8Linear):
                    parts = qt.int8_gemv(x, lin.qweight, lin.scales)
                    splits.add(parts.shape[0])
                    y = parts.float().sum(0).to(x.dtype)
                else:
                    parts = int4_triton.int4_gemv(x, lin.qweight, lin.scales, lin.mins, 128)
                    splits.add(parts.shape[0])
                    # the kernels read row-major buffers (quantize_int4's) as well as Int4Linear's
                    rm = lin.qweight.reshape(n, k // 2), lin.scales.contiguous(), lin.mins.contiguous()
                    assert torch.equal(int4_triton.int4_gemv(x, *rm, 128), parts)
                    y = parts.float().sum(0).to(x.dtype)
                    d = int4_triton.int4_dequantize(lin.qweight, lin.scales, lin.mins, 128, torch.float32)
                    assert torch.equal(d, quant.dequantize(lin))
                assert y.shape == (rows, n) and y.dtype == torch.bfloat16
                worst = max(worst, float((y.float() - ref).abs().max() / ref.abs().max()))
    assert worst < 1.5e-2, worst
    assert 1 in splits and len(splits) >= 3, splits  # unsplit and K-split partials are both exercised
    print("ok", worst, sorted(splits))
    """
)


def test_triton_kernels_in_the_interpreter():
    assert run_in_interpreter(KERNEL_CHECK).startswith("ok")


# silu(gate) * up from an int8 gate|up weight in one kernel, against the unfused form with each factor rounded
# to bf16 (the linear's output) and the product rounded once; rows that end mid-program (N / 2 = 20, 28); and
# through the op a weight the GEMV splits along K (16 x 4096 on the interpreter's 4 SMs), where the op sums
# the partials and applies SiLU itself.
GATED_CHECK = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from pixdesk.model import quant, quant_ops, quant_triton
    g = torch.Generator().manual_seed(1)
    paths = set()
    for n, k in ((64, 1024), (40, 512), (56, 2048), (16, 4096)):
        w = torch.randn(n, k, generator=g)
        x = torch.randn(1, k, generator=g).to(torch.bfloat16)
        lin = quant.Int8Linear.from_float(w)
        fused = quant_triton.int8_splits(n, k, 1, x.device) == 1
        paths.add(fused)
        if fused:
            y = quant_triton.int8_gated(x, lin.qweight, lin.scales)
        else:
            y = quant_ops.int8_gated_op(x, lin.qweight, lin.scales)
        gate, up = (x.float() @ quant.dequantize(lin).T).to(torch.bfloat16).float().chunk(2, dim=-1)
        ref = F.silu(gate) * up
        assert y.shape == (1, n // 2) and y.dtype == torch.bfloat16, (y.shape, y.dtype)
        err = float((y.float() - ref).abs().max() / ref.abs().max())
        assert err < 2e-2, (n, k, err)
    assert paths == {True, False}, paths
    print("ok")
    """
)


def test_int8_gated_gemv_in_the_interpreter():
    assert run_in_interpreter(GATED_CHECK).startswith("ok")


def test_random_state_dict_is_untouched_by_quantization():
    """Quantizing a model never writes into the float tensors it was given (they may be shared)."""
    from pixdesk.weights.tiny import TINY_ARGS

    state = random_state_dict(TINY_ARGS, seed=5)
    before = state["layers.0.attention.wq.weight"].clone()
    w = state["layers.0.attention.wq.weight"]
    Int8Linear.from_float(w), Int4Linear.from_float(w, 16)
    assert torch.equal(before, w)


def test_gpu_ops_fall_back_to_torch_without_triton(monkeypatch):
    """CUDA builds of torch without Triton (Windows): the custom ops dequantize with torch ops instead."""
    from pixdesk.model import quant_ops

    monkeypatch.setattr(quant_ops, "_kernels", lambda: None)
    g = torch.Generator().manual_seed(4)
    w, x = torch.randn(64, 256, generator=g), torch.randn(3, 256, generator=g)
    for lin in (Int8Linear.from_float(w), Int4Linear.from_float(w)):
        if isinstance(lin, Int8Linear):
            y = quant_ops.int8_linear_op(x, lin.qweight, lin.scales)[0]
        else:
            y = quant_ops._int4_linear_op(x, lin.qweight, lin.scales, lin.mins, lin.group_size)[0]
        assert torch.allclose(y, F.linear(x, dequantize(lin)), atol=1e-4)


def test_quantizing_in_row_blocks_equals_one_pass(monkeypatch):
    """Large weights (the LM head) are quantized a block of rows at a time to bound the temporaries."""
    import pixdesk.model.quant as quant

    w = torch.randn(100, 256, generator=torch.Generator().manual_seed(6))
    for spec in (QuantSpec("int8"), QuantSpec("int4")):
        whole = quant.quantize_linear(w, spec)
        monkeypatch.setattr(quant, "QUANTIZE_ROWS", 32)
        blocks = quant.quantize_linear(w, spec)
        monkeypatch.undo()
        a, b = whole.state_dict(), blocks.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
