"""The decode step's add + RMSNorm kernel (engine/decode_norm.py) in Triton's interpreter, against the unfused
form: the branch's partials summed and rounded, added to the residual, then model.layers.RMSNorm."""

from __future__ import annotations

import textwrap

from tests.triton_interpreter import run_in_interpreter

NORM_CHECK = textwrap.dedent(
    """
    import torch
    from pixdesk.engine.decode_norm import add_rms_norm
    from pixdesk.model.layers import RMSNorm
    g = torch.Generator().manual_seed(0)
    for rows, dim, parts, dtype in ((1, 5120 // 8, 2, torch.float32), (3, 384, 1, torch.bfloat16),
                                    (2, 320, 4, torch.float32)):
        norm = RMSNorm(dim, 1e-5).to(torch.bfloat16)
        with torch.no_grad():
            norm.weight.copy_(torch.rand(dim, generator=g) + 0.5)
        x = (torch.randn(rows, dim, generator=g) * 3).to(torch.bfloat16)
        branch = torch.randn(parts, rows, dim, generator=g).to(dtype)
        h, out = add_rms_norm(x, branch, norm.weight, norm.eps)
        ref_h = x + branch.float().sum(0).to(torch.bfloat16)
        # Triton 3.6's interpreter truncates fp32 -> bf16 where the GPU rounds to nearest: a few units in the
        # last place (the CUDA test of the captured step holds the GPU to the unfused form)
        assert float((h.float() - ref_h.float()).abs().max()) <= float(ref_h.float().abs().max()) * 2**-6
        ref = norm(ref_h)
        assert out.dtype == torch.bfloat16 and out.shape == ref.shape
        err = float((out.float() - ref.float()).abs().max() / ref.float().abs().max())
        assert err < 3e-2, err  # the truncation again
    print("ok")
    """
)


def test_add_rms_norm_in_the_interpreter():
    assert run_in_interpreter(NORM_CHECK).startswith("ok")
