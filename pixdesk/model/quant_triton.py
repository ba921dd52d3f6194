"""Triton kernels for quantized weights on CUDA: decode GEMVs that dequantize in registers, and the int4
dequantizer behind the prefill GEMM. Imported only when a quantized linear runs on a GPU.

Decode reads every weight byte once per step, so the kernels are built around the loads: each program owns
BLOCK_N output channels (rows of the weight, contiguous in memory) and walks K; the few input rows (x) are
reread from L1/L2. One row (batch 1) uses plain FMAs; 2..16 rows use `tl.dot` on a 16-row tile.

int4: a program walks K one group (G weights = G/2 bytes per row) at a time, so a group's scale and
minimum are one value per row: sum_k (q_k s + m) x_k = s * sum_k q_k x_k + m * sum_k x_k.
Block sizes are autotuned per (N, K, rows) and the timings kept in Triton's cache.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Tests on the CPU run the kernels in Triton's interpreter.
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


# Triton 3.6's interpreter computes bf16 tl.dot wrongly; under it the dot operands go through fp32 instead.
_DOT_F32 = tl.constexpr(_INTERPRET)


@triton.jit
def _dot_t(a, b):
    """a (M, K) @ b (N, K).T in fp32, with b converted to a's dtype (bf16 on the GPU)."""
    if _DOT_F32:
        return tl.dot(a.to(tl.float32), tl.trans(b.to(tl.float32)))
    return tl.dot(a, tl.trans(b.to(a.dtype)))


def _bench(fn, quantiles):
    """Short autotune timings (each config runs ~30 ms); the interpreter only checks that a config runs."""
    if _INTERPRET:
        fn()
        return [0.0] * len(quantiles)
    return triton.testing.do_bench(fn, warmup=5, rep=25, quantiles=quantiles)


def _prune(configs, named_args, **kwargs):
    return configs[::8] if _INTERPRET else configs  # one config per block size under the interpreter


_TUNE = {"key": ["N", "K", "MB"], "cache_results": True, "do_bench": _bench,
         "prune_configs_by": {"early_config_prune": _prune}}  # fmt: skip


def _configs(block_ns, block_ks, warps=(4, 8), stages=(3, 4)):
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bn in block_ns for bk in block_ks for w in warps for s in stages
    ]  # fmt: skip


@triton.autotune(configs=_configs((16, 32, 64), (256, 512)), **_TUNE)
@triton.jit
def _int8_gemv(x_ptr, w_ptr, s_ptr, y_ptr, M, N, K, MB: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr):  # fmt: skip
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    rk0 = tl.arange(0, BLOCK_K)
    if MB == 1:
        acc = tl.zeros((BLOCK_N,), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + rk0
            k_ok = rk < K
            w = tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0)
            x = tl.load(x_ptr + rk, mask=k_ok, other=0.0).to(tl.float32)
            acc += tl.sum(w.to(tl.float32) * x[None, :], axis=1)
        s = tl.load(s_ptr + rn, mask=n_ok, other=0.0)
        tl.store(y_ptr + rn, (acc * s).to(y_ptr.dtype.element_ty), mask=n_ok)
    else:
        rm = tl.arange(0, MB)
        m_ok = rm < M
        acc = tl.zeros((MB, BLOCK_N), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + rk0
            k_ok = rk < K
            w = tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0)
            x = tl.load(x_ptr + rm[:, None] * K + rk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            acc += _dot_t(x, w)  # (MB, BLOCK_N)
        s = tl.load(s_ptr + rn, mask=n_ok, other=0.0)
        out = (acc * s[None, :]).to(y_ptr.dtype.element_ty)
        tl.store(y_ptr + rm[:, None] * N + rn[None, :], out, mask=m_ok[:, None] & n_ok[None, :])


@triton.autotune(configs=_configs((16, 32, 64), (2, 4, 8)), **_TUNE)
@triton.jit
def _int4_gemv(x_ptr, w_ptr, s_ptr, m_ptr, y_ptr, M, N, K, G: tl.constexpr, MB: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    # BLOCK_K counts groups per iteration here: BLOCK_N x BLOCK_K x G/2 bytes per load.
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    HALF: tl.constexpr = G // 2
    KB, NG = K // 2, K // G
    rg0 = tl.arange(0, BLOCK_K)
    rj = tl.arange(0, HALF)  # byte index inside a group
    if MB == 1:
        # (BLOCK_N, groups, bytes) tiles: a group's scale and min are one value per row and group.
        acc = tl.zeros((BLOCK_N,), tl.float32)
        for g0 in range(0, NG, BLOCK_K):
            rg = g0 + rg0
            g_ok = rg < NG
            ok3 = n_ok[:, None, None] & g_ok[None, :, None]
            w_off = rn[:, None, None] * KB + rg[None, :, None] * HALF + rj[None, None, :]
            b = tl.load(w_ptr + w_off, mask=ok3, other=0)
            xk = rg[:, None] * G + 2 * rj[None, :]  # (groups, bytes): k of the low nibble
            xe = tl.load(x_ptr + xk, mask=g_ok[:, None], other=0.0).to(tl.float32)
            xo = tl.load(x_ptr + xk + 1, mask=g_ok[:, None], other=0.0).to(tl.float32)
            lo, hi = (b & 0xF).to(tl.float32), (b >> 4).to(tl.float32)
            qx = tl.sum(lo * xe[None, :, :] + hi * xo[None, :, :], axis=2)  # (BLOCK_N, groups)
            sm_off = rn[:, None] * NG + rg[None, :]
            ok2 = n_ok[:, None] & g_ok[None, :]
            sc = tl.load(s_ptr + sm_off, mask=ok2, other=0.0).to(tl.float32)
            mn = tl.load(m_ptr + sm_off, mask=ok2, other=0.0).to(tl.float32)
            xs = tl.sum(xe + xo, axis=1)  # (groups,)
            acc += tl.sum(sc * qx + mn * xs[None, :], axis=1)
        tl.store(y_ptr + rn, acc.to(y_ptr.dtype.element_ty), mask=n_ok)
    else:
        # Dequantize a (BLOCK_N, BLOCK_K x G/2) byte tile to bf16 (scales gathered per byte from L1), then
        # two tensor-core products: even k with the low nibbles, odd k with the high ones.
        rm = tl.arange(0, MB)
        m_ok = rm < M
        rb = tl.arange(0, BLOCK_K * HALF)
        acc = tl.zeros((MB, BLOCK_N), tl.float32)
        for j0 in range(0, KB, BLOCK_K * HALF):
            rjj = j0 + rb
            j_ok = rjj < KB
            ok = n_ok[:, None] & j_ok[None, :]
            b = tl.load(w_ptr + rn[:, None] * KB + rjj[None, :], mask=ok, other=0)
            sm_off = rn[:, None] * NG + (rjj // HALF)[None, :]
            sc = tl.load(s_ptr + sm_off, mask=ok, other=0.0).to(tl.float32)
            mn = tl.load(m_ptr + sm_off, mask=ok, other=0.0).to(tl.float32)
            x_ok = m_ok[:, None] & j_ok[None, :]
            xe = tl.load(x_ptr + rm[:, None] * K + 2 * rjj[None, :], mask=x_ok, other=0.0)
            xo = tl.load(x_ptr + rm[:, None] * K + 2 * rjj[None, :] + 1, mask=x_ok, other=0.0)
            w_lo, w_hi = (b & 0xF).to(tl.float32) * sc + mn, (b >> 4).to(tl.float32) * sc + mn
            acc += _dot_t(xe, w_lo) + _dot_t(xo, w_hi)
        out = acc.to(y_ptr.dtype.element_ty)
        tl.store(y_ptr + rm[:, None] * N + rn[None, :], out, mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _int4_dequant(w_ptr, s_ptr, m_ptr, y_ptr, N, K, G: tl.constexpr, BLOCK_N: tl.constexpr):
    """One group of BLOCK_N rows per program -> y (N, K) in y's dtype."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    g = tl.program_id(1)
    n_ok = rn < N
    HALF: tl.constexpr = G // 2
    rj = g * HALF + tl.arange(0, HALF)
    b = tl.load(w_ptr + rn[:, None] * (K // 2) + rj[None, :], mask=n_ok[:, None], other=0)
    s = tl.load(s_ptr + rn * (K // G) + g, mask=n_ok, other=0.0).to(tl.float32)[:, None]
    m = tl.load(m_ptr + rn * (K // G) + g, mask=n_ok, other=0.0).to(tl.float32)[:, None]
    dst = y_ptr + rn[:, None] * K + 2 * rj[None, :]
    tl.store(dst, ((b & 0xF).to(tl.float32) * s + m).to(y_ptr.dtype.element_ty), mask=n_ok[:, None])
    tl.store(dst + 1, ((b >> 4).to(tl.float32) * s + m).to(y_ptr.dtype.element_ty), mask=n_ok[:, None])


def _row_block(M: int) -> int:
    if M > 16:
        raise ValueError(f"the GEMV kernels take at most 16 rows, got {M}")
    return 1 if M == 1 else 16


def int8_gemv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x (M <= 16, K) contiguous @ (q * s).T -> (M, N) in x's dtype."""
    M, K = x.shape
    N = qweight.shape[0]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    _int8_gemv[grid](x, qweight, scales, y, M, N, K, MB=_row_block(M))
    return y


def int4_gemv(x, qweight, scales, mins, group: int) -> torch.Tensor:
    """x (M <= 16, K) contiguous @ dequantized int4 (N, K).T -> (M, N) in x's dtype."""
    M, K = x.shape
    N = qweight.shape[0]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    _int4_gemv[grid](x, qweight, scales, mins, y, M, N, K, G=group, MB=_row_block(M))
    return y


def int4_dequantize(qweight, scales, mins, group: int, dtype: torch.dtype) -> torch.Tensor:
    N, K = qweight.shape[0], qweight.shape[1] * 2
    y = torch.empty(N, K, dtype=dtype, device=qweight.device)
    _int4_dequant[(triton.cdiv(N, 64), K // group)](qweight, scales, mins, y, N, K, G=group, BLOCK_N=64)
    return y
