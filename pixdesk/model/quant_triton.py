"""Triton kernels for quantized weights on CUDA: decode GEMVs that dequantize in registers, and the int4
dequantizer behind the prefill GEMM. Imported only when a quantized linear runs on a GPU.

Decode reads every weight byte once per step, so the kernels are built around the loads: each program owns
BLOCK_N output channels (rows of the weight, contiguous in memory) and walks K, reading the weights as int32
words and turning bytes or nibbles into floats with integer ops (see `_byte_values`); the few input rows (x)
are reread from L1/L2. int8: one row with FMAs, 2..16 rows with `tl.dot` on a 16-row tile. int4: tiles of
whole groups, so a group's scale and minimum are one value per row and group:
sum_k (q_k s + m) x_k = s * sum_k q_k x_k + m * sum_k x_k; FMAs for one row and for 2..16 rows.
Where torch's tinygemm fits and memory allows, int4 decode uses it instead (quant.prepare_for_device).
Measured on an H200 (bench/kernels.py): the 161 linears of Pixtral-12B take 3.80 ms (int8) and 5.25 ms (int4)
at one row. Block sizes are autotuned per (N, K, rows) and the timings kept in Triton's cache.
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


def _tune(one_row: list, rows: list) -> dict:
    """Autotune over a few configs around the winners measured on an H200 (bench/kernels.py), one list for
    a single row and one for 2..16 rows; the choice per (N, K, rows) is kept in Triton's cache, so only a
    first start pays the ~1 s per shape. Under the interpreter one config per block size is enough."""
    tagged = [(c, True) for c in one_row] + [(c, False) for c in rows]

    def prune(configs, named_args, **kwargs):
        single = kwargs.get("MB", 1) == 1
        chosen = [c for c, one in tagged if one == single]
        return chosen[::4] if _INTERPRET else chosen

    configs = [c for c, _ in tagged]
    return {"configs": configs, "key": ["N", "K", "MB"], "cache_results": True, "do_bench": _bench,
            "prune_configs_by": {"early_config_prune": prune}}  # fmt: skip


def _configs(block_ns, block_ks, warps=(4,), stages=(3,)) -> list:
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bn in block_ns for bk in block_ks for w in warps for s in stages
    ]  # fmt: skip


@triton.jit
def _byte_values(word, i: tl.constexpr):
    """Byte i of int32 words holding int8 weights -> fp32, with integer ops and one add: (byte ^ 0x80) sits in
    the mantissa of 2^23 (0x4B000000), so the bits read as 2^23 + 128 + q; int-to-float conversions run at
    a quarter of the FMA rate and would bound the kernel below the memory bandwidth."""
    return (((word >> (8 * i)) & 0xFF) ^ 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0


@triton.jit
def _nibble_values(word, i: tl.constexpr):
    """Nibble i (weight k = 8w + i) of int32 words holding packed int4 -> fp32 in 0..15, the same way."""
    return (((word >> (4 * i)) & 0xF) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0


_INT8_ONE_ROW = _configs((16, 32), (512, 1024), warps=(4, 8))
_INT8_ROWS = _configs((32, 64), (256, 512), stages=(3, 4))


@triton.autotune(**_tune(_INT8_ONE_ROW, _INT8_ROWS))
@triton.jit
def _int8_gemv(x_ptr, w_ptr, s_ptr, y_ptr, M, N, K, MB: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr):  # fmt: skip
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    if MB == 1:
        # Weights read as int32 words (4 per word); products accumulate elementwise, one reduction at the end.
        KW = K // 4
        w32 = w_ptr.to(tl.pointer_type(tl.int32))
        rw0 = tl.arange(0, BLOCK_K // 4)
        acc = tl.zeros((BLOCK_N, BLOCK_K // 4), tl.float32)
        for w0 in range(0, KW, BLOCK_K // 4):
            rw = w0 + rw0
            w_ok = rw < KW
            word = tl.load(w32 + rn[:, None] * KW + rw[None, :], mask=n_ok[:, None] & w_ok[None, :], other=0)
            for i in tl.static_range(4):
                xi = tl.load(x_ptr + 4 * rw + i, mask=w_ok, other=0.0).to(tl.float32)
                acc += _byte_values(word, i) * xi[None, :]
        s = tl.load(s_ptr + rn, mask=n_ok, other=0.0)
        tl.store(y_ptr + rn, (tl.sum(acc, axis=1) * s).to(y_ptr.dtype.element_ty), mask=n_ok)
    else:
        rm = tl.arange(0, MB)
        m_ok = rm < M
        rk0 = tl.arange(0, BLOCK_K)
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


@triton.autotune(**_tune(_configs((16, 32), (4, 8), warps=(4, 8)), []))
@triton.jit
def _int4_gemv1(x_ptr, w_ptr, s_ptr, m_ptr, y_ptr, N, K, G: tl.constexpr, MB: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """One row. Tiles (BLOCK_N, BLOCK_K groups, G/8 words): a group's scale and min are one value per row
    and group, applied elementwise; one reduction at the end."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    W: tl.constexpr = G // 8  # int32 words per group
    KW, NG = K // 8, K // G
    w32 = w_ptr.to(tl.pointer_type(tl.int32))
    rg0, rw = tl.arange(0, BLOCK_K), tl.arange(0, W)
    acc = tl.zeros((BLOCK_N, BLOCK_K, W), tl.float32)
    for g0 in range(0, NG, BLOCK_K):
        rg = g0 + rg0
        g_ok = rg < NG
        word = tl.load(w32 + rn[:, None, None] * KW + rg[None, :, None] * W + rw[None, None, :],
                       mask=n_ok[:, None, None] & g_ok[None, :, None], other=0)  # fmt: skip
        xk = rg[:, None] * G + 8 * rw[None, :]  # (groups, words): k of nibble 0
        qx = tl.zeros((BLOCK_N, BLOCK_K, W), tl.float32)
        xs = tl.zeros((BLOCK_K, W), tl.float32)
        for i in tl.static_range(8):
            xi = tl.load(x_ptr + xk + i, mask=g_ok[:, None], other=0.0).to(tl.float32)
            qx += _nibble_values(word, i) * xi[None, :, :]
            xs += xi
        sm_off = rn[:, None] * NG + rg[None, :]
        ok2 = n_ok[:, None] & g_ok[None, :]
        sc = tl.load(s_ptr + sm_off, mask=ok2, other=0.0).to(tl.float32)
        mn = tl.load(m_ptr + sm_off, mask=ok2, other=0.0).to(tl.float32)
        acc += sc[:, :, None] * qx + mn[:, :, None] * xs[None, :, :]
    out = tl.sum(tl.sum(acc, axis=2), axis=1)
    tl.store(y_ptr + rn, out.to(y_ptr.dtype.element_ty), mask=n_ok)


@triton.autotune(**_tune([], _configs((16, 32, 64), (0,), warps=(4, 8))))
@triton.jit
def _int4_gemv_rows(x_ptr, w_ptr, s_ptr, m_ptr, y_ptr, M, N, K, G: tl.constexpr, MB: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """2..16 rows (MB, a power of two >= M). One group per step; each dequantized weight feeds MB FMAs
    (tiles (MB, BLOCK_N, G/8 words)), so the weight bytes are read once for all rows."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    W: tl.constexpr = G // 8
    KW, NG = K // 8, K // G
    w32 = w_ptr.to(tl.pointer_type(tl.int32))
    rm, rw = tl.arange(0, MB), tl.arange(0, W)
    m_ok = rm < M
    acc = tl.zeros((MB, BLOCK_N, W), tl.float32)
    for g in range(0, NG):
        word = tl.load(w32 + rn[:, None] * KW + g * W + rw[None, :], mask=n_ok[:, None], other=0)  # (BN, W)
        qx = tl.zeros((MB, BLOCK_N, W), tl.float32)
        xs = tl.zeros((MB, W), tl.float32)
        for i in tl.static_range(8):
            xi = tl.load(x_ptr + rm[:, None] * K + g * G + 8 * rw[None, :] + i, mask=m_ok[:, None], other=0.0)
            xi = xi.to(tl.float32)  # (MB, W)
            qx += _nibble_values(word, i)[None, :, :] * xi[:, None, :]
            xs += xi
        sc = tl.load(s_ptr + rn * NG + g, mask=n_ok, other=0.0).to(tl.float32)
        mn = tl.load(m_ptr + rn * NG + g, mask=n_ok, other=0.0).to(tl.float32)
        acc += sc[None, :, None] * qx + mn[None, :, None] * xs[:, None, :]
    out = tl.sum(acc, axis=2).to(y_ptr.dtype.element_ty)
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


def _row_block(M: int, K: int) -> int:
    if M > 16 or K % 8:
        raise ValueError(f"the GEMV kernels take at most 16 rows and K a multiple of 8, got {M} x {K}")
    return 1 if M == 1 else 16


def int8_gemv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x (M <= 16, K) contiguous @ (q * s).T -> (M, N) in x's dtype."""
    M, K = x.shape
    N = qweight.shape[0]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    _int8_gemv[grid](x, qweight, scales, y, M, N, K, MB=_row_block(M, K))
    return y


def int4_gemv(x, qweight, scales, mins, group: int) -> torch.Tensor:
    """x (M <= 16, K) contiguous @ dequantized int4 (N, K).T -> (M, N) in x's dtype."""
    M, K = x.shape
    N = qweight.shape[0]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    if _row_block(M, K) == 1:
        _int4_gemv1[grid](x, qweight, scales, mins, y, N, K, G=group, MB=1)
    else:
        _int4_gemv_rows[grid](x, qweight, scales, mins, y, M, N, K, G=group, MB=triton.next_power_of_2(M))
    return y


def int4_dequantize(qweight, scales, mins, group: int, dtype: torch.dtype) -> torch.Tensor:
    N, K = qweight.shape[0], qweight.shape[1] * 2
    y = torch.empty(N, K, dtype=dtype, device=qweight.device)
    _int4_dequant[(triton.cdiv(N, 64), K // group)](qweight, scales, mins, y, N, K, G=group, BLOCK_N=64)
    return y
