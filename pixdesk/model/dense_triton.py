"""The Triton kernel behind dense_gemv: one bf16 row times a bf16 weight, K split into fp32 partials.
Imported only when the GEMV runs (CUDA, or Triton's interpreter in the CPU tests)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pixdesk.model.quant_triton import _INTERPRET, _bench, _configs, k_splits, partials_dtype

BLOCK_N = 16  # output channels a program; fixed, because it sets how many programs there are to split K for
SPLIT_ALIGN = 512  # each K slice starts at a multiple of 1 KiB of a row
_CONFIGS = _configs((BLOCK_N,), (256, 512), warps=(4,), stages=(3, 4)) + _configs(
    (BLOCK_N,), (512, 1024), warps=(8,), stages=(3, 4)
)


def _prune(configs, named_args, **kwargs):
    return configs[::4] if _INTERPRET else configs


@triton.autotune(configs=_CONFIGS, key=["N", "K"], cache_results=True, do_bench=_bench,
                 prune_configs_by={"early_config_prune": _prune})  # fmt: skip
@triton.jit
def _gemv(x_ptr, w_ptr, y_ptr, N, K, SPLIT_K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Program (n, s): outputs [n * BLOCK_N, +BLOCK_N) over K in [s * SPLIT_K, +SPLIT_K) -> row s of y."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    k_lo = tl.program_id(1) * SPLIT_K
    k_hi = tl.minimum(k_lo + SPLIT_K, K)
    rk0 = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)  # elementwise products, one reduction at the end
    for k0 in range(0, SPLIT_K, BLOCK_K):  # from 0: Triton's interpreter wants plain bounds
        rk = k_lo + k0 + rk0
        k_ok = rk < k_hi
        w = tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        x = tl.load(x_ptr + rk, mask=k_ok, other=0.0)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    out = tl.sum(acc, axis=1)
    tl.store(y_ptr + tl.program_id(1) * N + rn, out.to(y_ptr.dtype.element_ty), mask=n_ok)


def splits(N: int, K: int, device: torch.device) -> int:
    return k_splits(triton.cdiv(N, BLOCK_N), K // SPLIT_ALIGN, device)


def gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (1, K) @ weight (N, K).T -> partial sums (S, 1, N) (fp32 when S > 1, else x's dtype)."""
    M, K = x.shape
    N = weight.shape[0]
    if M != 1 or K % 8 or weight.shape[1] != K:
        shape = tuple(weight.shape)
        raise ValueError(f"the dense GEMV takes one row and K a multiple of 8, got {M} x {K} @ {shape}")
    S = splits(N, K, x.device)
    y = torch.empty(S, 1, N, dtype=partials_dtype(S, x.dtype), device=x.device)
    split_k = triton.cdiv(triton.cdiv(K, S), SPLIT_ALIGN) * SPLIT_ALIGN
    _gemv[(triton.cdiv(N, BLOCK_N), S)](x, weight, y, N, K, split_k)
    return y
