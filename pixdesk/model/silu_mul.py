"""silu(gate) * up from a fused gate|up projection's K-split partials, as one Triton kernel (CUDA).

The int4 decode step's gate|up GEMV writes S fp32 partials (S, 1, 2H); summing them, the SiLU and the
product were one Inductor kernel, launched plainly between two of our PDL kernels (model/pdl.py), so the
down projection could not start under it. This kernel is launched with PDL like its neighbours.

Rounding follows the unfused form (sum_partials, then F.silu and the product in the model's dtype): the
sums are rounded to the dtype, SiLU is computed in fp32 and rounded, the product is rounded.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pixdesk.model import pdl
from pixdesk.model.quant_triton import summed_partials

BLOCK = 512  # columns a program: 28 programs for a 12B model's 14,336


@triton.jit
def _silu_mul(parts_ptr, part_stride, out_ptr, H, NP: tl.constexpr, BLOCK: tl.constexpr,
              USE_PDL: tl.constexpr):  # fmt: skip
    DT: tl.constexpr = out_ptr.dtype.element_ty
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < H
    pdl.wait(USE_PDL)
    pdl.release(USE_PDL)
    gate = summed_partials(parts_ptr, cols, ok, part_stride, NP, DT)
    up = summed_partials(parts_ptr, H + cols, ok, part_stride, NP, DT)
    silu = (gate / (1.0 + tl.exp(-gate))).to(DT).to(tl.float32)
    tl.store(out_ptr + cols, (silu * up).to(DT), mask=ok)


def silu_mul_partials(parts: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """parts (S, 1, 2H) partials of one row's gate|up product -> silu(gate) * up (1, H) in `dtype`."""
    S, M, N = parts.shape
    if M != 1 or N % 2:
        raise ValueError(f"silu_mul_partials takes one row of gate|up partials, got {tuple(parts.shape)}")
    parts = parts.contiguous()
    out = torch.empty(1, N // 2, dtype=dtype, device=parts.device)
    use_pdl = pdl.enabled(parts.device)
    _silu_mul[(triton.cdiv(N // 2, BLOCK),)](parts, parts.stride(0), out, N // 2, NP=S, BLOCK=BLOCK,
                                             USE_PDL=use_pdl, num_warps=4, **pdl.launch(use_pdl))  # fmt: skip
    return out
