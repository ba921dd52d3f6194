"""One-row bf16 products for the decode step on CUDA: a Triton GEMV that splits K into fp32 partials.

At one row a bf16 linear reads its weight once and does two FLOPs a weight, so it is bound by the bytes.
cuBLAS reaches the read bandwidth on the large shapes (gate|up, LM head) but loses ~20% on the small and
tall ones (q|k|v 5120 -> 6144, wo 4096 -> 5120, and the down projection 14336 -> 5120, which it splits K on
and reduces in a kernel of its own). Here each program owns BLOCK_N output channels over a slice of K and
writes fp32 partials (S, 1, N); their sum is left to the caller, which in the compiled decode step fuses it
into the next kernel (the residual add and RMSNorm), so no reduction kernel of its own is launched.

`DecodeLinear` is an nn.Linear (same parameters, same state dict) whose forward takes this path for one row
of bf16 on CUDA when `DECODE_GEMV` is on and the shape is in `GEMV_SHAPES`; every other call is F.linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pixdesk.model.quant_ops import sum_partials

# Measured on an H200 (session 6). Per linear, one row, cuBLAS against this GEMV (`PARTS=dense_chains python
# bench/kernels.py`): q|k|v 18.2 -> 17.0 us, wo 13.4 -> 12.1, gate|up 69.9 -> 68.0, down 42.0 -> 36.5
# (4.0 TB/s), LM head 376 -> 300. Engine b1 at the 4.2k context (`AB=baseline,dense_gemv python bench/gpu.py
# --stage ab`): 138.9 -> 148.4 tok/s, same greedy ids; with only the three small shapes 143.1.
DECODE_GEMV = True
# (N, K) the GEMV takes; empty = every shape. The big ones stay with cuBLAS, which reads them at the limit.
GEMV_SHAPES: frozenset[tuple[int, int]] = frozenset()


@torch.library.custom_op("pixdesk::dense_gemv", mutates_args=())
def dense_gemv_op(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (1, K) bf16 @ weight (N, K).T -> partials (S, 1, N), fp32 when S > 1."""
    from pixdesk.model import dense_triton

    return dense_triton.gemv(x, weight)


@dense_gemv_op.register_fake
def _(x, weight):
    from pixdesk.model import dense_triton, quant_triton

    S = dense_triton.splits(weight.shape[0], weight.shape[1], x.device)
    return x.new_empty(S, 1, weight.shape[0], dtype=quant_triton.partials_dtype(S, x.dtype))


def takes_gemv(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        DECODE_GEMV
        and x.is_cuda
        and x.dtype == torch.bfloat16 == weight.dtype
        and x.numel() == weight.shape[1]
        and weight.shape[1] % 8 == 0  # what the kernel takes (dense_triton.gemv); other shapes use F.linear
        and (not GEMV_SHAPES or tuple(weight.shape) in GEMV_SHAPES)
    )


class DecodeLinear(nn.Linear):
    """nn.Linear whose one-row bf16 CUDA calls take the split-K GEMV (see the module's docstring).

    No `gated` form (quant_ops.silu_gate_up): SiLU x up as the gate|up GEMV's epilogue measured slower in bf16
    on an H200 (session 8, bench/profile_decode.py): the GEMVs +0.13 ms a step against the 0.058 ms SiLU
    kernel it removed (replay 6.620 against 6.577 ms)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None and takes_gemv(x, self.weight):
            return sum_partials(self.partials(x.reshape(1, -1)), x.dtype).reshape(*x.shape[:-1], -1)
        return F.linear(x, self.weight, self.bias)

    def partials(self, x: torch.Tensor) -> torch.Tensor:
        """x (M, K) -> (S, M, N) partial products (quant_ops.linear_partials)."""
        if self.bias is None and takes_gemv(x, self.weight):
            return dense_gemv_op(x.contiguous(), self.weight)
        return F.linear(x, self.weight, self.bias)[None]


def use_decode_gemv(model: nn.Module, names: list[str]) -> None:
    """Give the named bf16 nn.Linear modules DecodeLinear's forward (parameters untouched)."""
    for name in names:
        m = model.get_submodule(name)
        if type(m) is nn.Linear:
            m.__class__ = DecodeLinear
