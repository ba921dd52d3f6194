"""The one-row bf16 decode GEMV (model/dense_gemv.py, dense_triton.py): its K-split partials against a float
product in Triton's interpreter, and the module swap that routes decode linears to it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pixdesk.model.dense_gemv import DecodeLinear, takes_gemv, use_decode_gemv
from pixdesk.weights.checkpoint import load_checkpoint
from tests.triton_interpreter import run_in_interpreter

ROOT = Path(__file__).resolve().parents[2]

GEMV_CHECK = textwrap.dedent(
    """
    import torch
    from pixdesk.model import dense_triton
    g = torch.Generator().manual_seed(0)
    worst, splits = 0.0, set()
    for n, k in ((48, 2048), (40, 1024), (24, 4096), (8, 512), (16, 1032)):
        w = torch.randn(n, k, generator=g).to(torch.bfloat16)
        x = torch.randn(1, k, generator=g).to(torch.bfloat16)
        parts = dense_triton.gemv(x, w)
        assert parts.shape[1:] == (1, n) and parts.shape[0] == dense_triton.splits(n, k, x.device)
        assert parts.dtype == (torch.float32 if parts.shape[0] > 1 else torch.bfloat16)
        splits.add(parts.shape[0])
        ref = x.float() @ w.float().T
        worst = max(worst, float((parts.float().sum(0) - ref).abs().max() / ref.abs().max()))
    assert worst < 1e-2, worst
    assert 1 in splits and len(splits) >= 2, splits
    try:
        two_rows = torch.zeros(2, 512, dtype=torch.bfloat16)
        dense_triton.gemv(two_rows, torch.zeros(8, 512, dtype=torch.bfloat16))
    except ValueError as e:
        assert "one row" in str(e)
    else:
        raise AssertionError("two rows were accepted")
    print("ok", worst, sorted(splits))
    """
)


def test_gemv_partials_in_the_interpreter():
    assert run_in_interpreter(GEMV_CHECK).startswith("ok")


def test_swap_keeps_parameters_and_falls_back_off_cuda():
    model = nn.Sequential(nn.Linear(64, 32, bias=False), nn.Linear(32, 16, bias=True))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    use_decode_gemv(model, ["0", "1"])
    assert all(type(m) is DecodeLinear for m in model)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    x = torch.randn(1, 64)
    assert torch.equal(model[0](x), F.linear(x, before["0.weight"]))  # CPU: F.linear, not the GEMV
    assert not takes_gemv(x, model[0].weight)


def test_fused_decoder_linears_are_decode_linears(tiny_dir):
    model = load_checkpoint(tiny_dir).model.fuse_projections()
    assert type(model.layers[0].attention.wqkv) is DecodeLinear
    assert type(model.layers[0].feed_forward.w2) is DecodeLinear
    assert type(model.output) is DecodeLinear
    assert all(type(m) is not DecodeLinear for m in model.vision_encoder.modules())  # the decoder's only
