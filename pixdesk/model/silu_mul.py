"""silu(gate) * up as Triton kernels (CUDA): from a fused gate|up projection's K-split partials (one decode
row), and over many rows of a gate|up product (the vision encoder's prefill).

The int4 decode step's gate|up GEMV writes S fp32 partials (S, 1, 2H); summing them, the SiLU and the
product were one Inductor kernel, launched plainly between two of our PDL kernels (model/pdl.py), so the
down projection could not start under it. This kernel is launched with PDL like its neighbours.

Rounding follows the unfused form (sum_partials, then F.silu and the product in the model's dtype): the
sums are rounded to the dtype, SiLU is computed in fp32 and rounded, the product is rounded.

The rows form exists because Inductor's kernel for the same two lines, in the vision encoder's compiled
region, ran at 0.6-1.2 TB/s on an H200 (81 us a layer unfused, 162 fused; bench/NOTES.md session 14), while
a plain streaming kernel reads and writes at memory speed. The decoder's region keeps Inductor's (4.3 TB/s).
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


ROWS_BLOCK = 1024  # columns a program of the rows kernel: 8 bf16 (16 bytes) a thread at 4 warps


@triton.jit
def _silu_mul_rows(gu_ptr, out_ptr, H, row_stride, BLOCK: tl.constexpr):
    DT: tl.constexpr = out_ptr.dtype.element_ty
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < H
    src = gu_ptr + row * row_stride + cols
    gate = tl.load(src, mask=ok).to(tl.float32)
    up = tl.load(src + H, mask=ok).to(tl.float32)
    silu = (gate / (1.0 + tl.exp(-gate))).to(DT).to(tl.float32)
    tl.store(out_ptr + row * H + cols, (silu * up).to(DT), mask=ok)


@torch.library.custom_op("pixdesk::silu_mul_rows", mutates_args=())
def silu_mul_rows(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up (M, 2H), rows contiguous -> silu(gate) * up (M, H) in its dtype; an opaque op, so it can sit
    inside a compiled region."""
    M, N = gate_up.shape
    if N % 2 or gate_up.stride(1) != 1:
        raise ValueError(f"silu_mul_rows takes (M, 2H) with contiguous rows, got {tuple(gate_up.shape)}")
    out = gate_up.new_empty(M, N // 2)
    if M:
        grid = (M, triton.cdiv(N // 2, ROWS_BLOCK))
        _silu_mul_rows[grid](gate_up, out, N // 2, gate_up.stride(0), BLOCK=ROWS_BLOCK, num_warps=4)
    return out


@silu_mul_rows.register_fake
def _(gate_up):
    return gate_up.new_empty(gate_up.shape[0], gate_up.shape[1] // 2)
