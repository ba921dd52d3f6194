"""The decode step's residual add + RMSNorm as one single-pass Triton kernel (CUDA), for a step's few rows.

Inductor emits this junction (a linear's K-split partials summed, added to the residual stream, then the
norm) as a looped reduction for a 5,120-wide row: one pass for the sum of squares and a second that reloads
the inputs to write the outputs, with one program per row, so each of its 80 launches a step is a chain of
dependent load rounds (2.7 and 3.9 us on an H200, session 7: 0.27 ms a step). Inductor keeps a row in
registers only up to 1,024 elements. Here a program holds its whole row: one load round (the partials'
count is a compile-time constant, so their loads are unrolled and in flight together: with a runtime loop
they were 8 dependent rounds, 5.4 us a call against 2.8 for bf16's one part, session 9), one reduction,
two stores. Launched with PDL (model/pdl.py): the next GEMV starts prefetching its weights while this runs.

Rounding follows the unfused form (model/layers.py RMSNorm): the partials' sum is rounded to the model's
dtype, added to the residual and rounded again (the new residual), normalized in fp32, rounded, then scaled
by the weight and rounded.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pixdesk.model import pdl
from pixdesk.model.quant_triton import summed_partials


@triton.jit
def _add_rms_norm(x_ptr, parts_ptr, part_stride, w_ptr, h_ptr, out_ptr, dim, eps, NP: tl.constexpr,
                  BLOCK: tl.constexpr, USE_PDL: tl.constexpr):  # fmt: skip
    row = tl.program_id(0)
    DT: tl.constexpr = x_ptr.dtype.element_ty
    cols = tl.arange(0, BLOCK)
    ok = cols < dim
    offs = row * dim + cols
    w = tl.load(w_ptr + cols, mask=ok, other=0.0)  # a weight: no kernel of the step writes it
    pdl.wait(USE_PDL)
    pdl.release(USE_PDL)
    branch = summed_partials(parts_ptr, offs, ok, part_stride, NP, DT)
    x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    h = (x + branch).to(DT)
    tl.store(h_ptr + offs, h, mask=ok)
    hf = h.to(tl.float32)
    inv = tl.rsqrt(tl.sum(hf * hf, axis=0) / dim + eps)
    tl.store(out_ptr + offs, (w.to(tl.float32) * (hf * inv).to(DT).to(tl.float32)).to(DT), mask=ok)


@torch.library.custom_op("pixdesk::add_rms_norm", mutates_args=())
def add_rms_norm(
    x: torch.Tensor, parts: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, dim) residual stream, parts (S, B, dim) K-split partials of the branch, weight (dim,) ->
    (h = x + sum(parts), rmsnorm(h) * weight), both (B, dim) in x's dtype."""
    B, dim = x.shape
    x, parts = x.contiguous(), parts.contiguous()
    h, out = torch.empty_like(x), torch.empty_like(x)
    block = triton.next_power_of_2(dim)
    warps = max(1, min(16, block // 512))  # 16 warps for 8,192 lanes: 16 elements a thread
    use_pdl = pdl.enabled(x.device)
    _add_rms_norm[(B,)](x, parts, parts.stride(0), weight, h, out, dim, eps, NP=parts.shape[0], BLOCK=block,
                        USE_PDL=use_pdl, num_warps=warps, **pdl.launch(use_pdl))  # fmt: skip
    return h, out


@add_rms_norm.register_fake
def _(x, parts, weight, eps):
    return torch.empty_like(x), torch.empty_like(x)
