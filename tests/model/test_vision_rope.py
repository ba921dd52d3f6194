"""The vision encoder keeps its RoPE tables per image layout (model/vision.py); parity covers their values."""

from __future__ import annotations

import torch


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
