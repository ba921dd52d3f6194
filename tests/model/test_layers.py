"""Small pieces of model/layers.py and model/vision.py that the larger parity tests only cover as a whole."""

from __future__ import annotations

import torch
from torch import nn

from pixdesk.model.dense_gemv import DecodeLinear
from pixdesk.model.layers import linear_plus


def test_linear_plus_adds_the_residual_in_the_matmul_for_dense_rows_and_plainly_otherwise():
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(16, 8, bias=False)
    decode = nn.Linear(16, 8, bias=False)
    decode.load_state_dict(lin.state_dict())
    decode.__class__ = DecodeLinear
    biased = nn.Linear(16, 8)
    for layer in (lin, decode, biased):
        for rows in (1, 5):  # one row: the plain path; several: addmm
            x, residual = torch.randn(1, rows, 16, generator=g), torch.randn(1, rows, 8, generator=g)
            with torch.no_grad():
                got, want = linear_plus(layer, x, residual), residual + layer(x)
            assert got.shape == want.shape
            torch.testing.assert_close(got, want)


def test_vision_rope_tables_are_kept_for_the_last_layouts():
    from pixdesk.model import vision
    from pixdesk.weights.tiny import TINY_ARGS

    enc = vision.VisionEncoder(TINY_ARGS.vision)
    first = enc._rope([(2, 3)], torch.device("cpu"))
    assert enc._rope([(2, 3)], torch.device("cpu")) is first  # the same tensors, not recomputed
    fresh = vision.VisionEncoder(TINY_ARGS.vision)._rope([(2, 3)], torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(first, fresh))
    for n in range(vision.ROPE_TABLES_KEPT + 3):
        enc._rope([(1, n + 1)], torch.device("cpu"))
    assert len(enc._rope_tables) == vision.ROPE_TABLES_KEPT
