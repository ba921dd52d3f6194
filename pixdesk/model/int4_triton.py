"""Triton kernels for int4 weights on CUDA (the interleaved layout of quant.py): decode GEMVs that dequantize
in registers, split along K where a matrix has too few output rows to fill the GPU, and the dequantizer
behind the prefill GEMM.

Decode reads every weight byte once per step, and at 4 bits the instructions per weight bound the kernel
before the memory does (an H200 SM must turn ~37 nibbles a clock into products to keep up with HBM). So:
- A nibble becomes a float with one LOP3 and one FADD: masked in place inside the mantissa of 2^23
  (`(word & 0xF << 4i) | 0x4B000000` reads as 2^23 + q * 2^4i), minus 2^23, leaves q * 2^4i exactly; the
  input it multiplies is pre-scaled by 2^-4i (exact), so the product is q * x. Nibbles 5..7 come from the
  word shifted right by 12 once (bit 23 is the exponent's). Then one FMA: three instructions a weight.
- The interleaved layout makes nibble i of a group's consecutive words multiply consecutive inputs, so
  each input is one vector load per 4 words, shared by all the rows a thread holds.
- w = q * s + m per group: sum_k w_k x_k = s * sum_k q_k x_k + m * sum_k x_k; the scale and minimum apply
  once per (row, group, word), not per weight, and one reduction ends the program.
- Split-K: where N / BLOCK_N programs would leave SMs idle (wo, w2 and q|k|v of a 12B model give 160-192
  programs for 132 SMs), each program takes 1/S of the groups and writes fp32 partials (S, M, N); the caller
  sums them, and in the compiled decode step Inductor folds that sum into the next kernel.
Block shapes are autotuned per (N, K, rows) and the timings kept in Triton's cache.

Measured on an H200 (bench/kernels.py, the 161 linears of a 12B model in one CUDA graph), 1e89f79's
version: 4.42 ms at one row and 17.05 ms at 8 (the previous kernel on the k-ordered layout: 5.25 and 21.8),
against torch's tinygemm 3.56 and 9.06 ms on its own copy of the weights.
The SASS of that version (compiled offline for sm_90, bench/NOTES.md) showed ~9 instructions a weight:
64-bit weight loads (Triton could prove K // 8 only even), two LOP3s a nibble, and every input converted,
scaled and summed once per row because a thread held one row. The one-row kernel now takes KW and NG as
arguments (128-bit loads), one LOP3 through inline PTX, and 2-D tiles where a thread holds 4 rows: ~5
instructions a weight in the loop. The 2..16-row kernel did MB FMAs a weight plus a shared-memory layout
conversion per nibble (~22 instructions a weight at 8 rows); it now turns a group into an exact bf16 tile
and multiplies on the tensor cores, with the loads pipelined through cp.async (~7 a weight at any row
count). Session 6 measured 3.97 ms at one row and 4.42 at 8 rows (tinygemm: 3.56 and 9.06). One bf16 row with
groups of 128 now goes to int4_mma.py's GEMV instead (2.92 ms, session 9); the one-row kernel here serves
other group sizes and dtypes.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from pixdesk.model.quant_triton import _ASM, _INTERPRET, _bench, _dot_t, k_splits, partials_dtype


@triton.jit
def _nibble_f(word, hi, i: tl.constexpr):
    """Nibble i of int32 words (hi = word >> 12) as fp32 q * 2^(4i) for i < 5, q * 2^(4i - 12) for i >= 5."""
    SHIFT: tl.constexpr = 4 * i - 12 * (i >= 5)
    if i < 5:
        src = word
    else:
        src = hi
    bits = _and_or(src, 0xF << SHIFT)
    return bits.to(tl.float32, bitcast=True) - 8388608.0


@triton.jit
def _and_or(src, MASK: tl.constexpr):
    """(src & MASK) | 0x4B000000 as one LOP3: ptxas splits the two immediates into two LOP3s otherwise
    (the SASS of session 5), and the int pipe is half the FP32 rate."""
    if _ASM:
        mask = tl.full(src.shape, MASK, tl.int32)
        magic = tl.full(src.shape, 0x4B000000, tl.int32)
        return tl.inline_asm_elementwise(
            "lop3.b32 $0, $1, $2, $3, 0xEA;",  # LUT 0xEA: (a & b) | c
            "=r,r,r,r", [src, mask, magic], dtype=tl.int32, is_pure=True, pack=1,
        )  # fmt: skip
    return (src & MASK) | 0x4B000000


@triton.jit
def _group_words(w32, rn, n_ok, SWN, SWG, g, g_hi, W: tl.constexpr):
    """Group g's words of rows rn -> (words (BN, W), words >> 12, group in this split, row mask). SWN, SWG:
    the words' row and group strides (int4_strides)."""
    g_ok = g < g_hi
    ok = n_ok & g_ok
    word = tl.load(w32 + rn[:, None] * SWN + g * SWG + tl.arange(0, W)[None, :], mask=ok[:, None], other=0)
    return word, word >> 12, g_ok, ok


@triton.jit
def _unscaled(x, i: tl.constexpr):
    """x times the power of two that undoes _nibble_f's position factor for nibble i (exact)."""
    SHIFT: tl.constexpr = 4 * i - 12 * (i >= 5)
    return x * (1.0 / (1 << SHIFT))


def _tune(configs: list) -> dict:
    def prune(configs, named_args, **kwargs):
        return configs[:1] if _INTERPRET else configs

    return {"configs": configs, "key": ["N", "KW", "MB", "SWN"], "cache_results": True, "do_bench": _bench,
            "prune_configs_by": {"early_config_prune": prune}}  # fmt: skip


def _configs(warps, stages) -> list:
    """Block shapes are fixed (BLOCK_N sets the K split); warps and pipeline depth are tuned."""
    return [triton.Config({}, num_warps=w, num_stages=s) for w in warps for s in stages]


@triton.autotune(**_tune(_configs((4, 8), (2, 3, 4))))
@triton.jit
def _gemv1(x_ptr, w_ptr, s_ptr, m_ptr, y_ptr, N, KW, NG, SPLIT_GROUPS, SWN, SWG, SSN, SSG, G: tl.constexpr,
           MB: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """One row, one group a step: tiles (BLOCK_N rows, G/8 words). With 4 words a thread along K, a thread
    holds BLOCK_N / 32 rows (4 warps), so each input it loads, converts and scales serves that many rows.
    The word strides come as arguments (16 and 16 N group-major, KW and 16 row-major): Triton then knows
    they are multiples of 16 and loads 4 words at once (from K // 8 it could prove only 2)."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    W: tl.constexpr = G // 8  # int32 words per group
    g_lo = tl.program_id(1) * SPLIT_GROUPS
    g_hi = tl.minimum(g_lo + SPLIT_GROUPS, NG)
    w32 = w_ptr.to(tl.pointer_type(tl.int32))
    rw = tl.arange(0, W)
    acc = tl.zeros((BLOCK_N, W), tl.float32)
    for j in range(0, SPLIT_GROUPS):  # from 0: Triton's interpreter wants plain bounds
        g = g_lo + j
        word, hi, g_ok, ok = _group_words(w32, rn, n_ok, SWN, SWG, g, g_hi, W)
        qx = tl.zeros((BLOCK_N, W), tl.float32)
        xs = tl.zeros((W,), tl.float32)
        for i in tl.static_range(8):
            xi = tl.load(x_ptr + g * G + i * W + rw, mask=g_ok, other=0.0).to(tl.float32)
            xs += xi
            qx += _nibble_f(word, hi, i) * _unscaled(xi, i)[None, :]
        sc = tl.load(s_ptr + rn * SSN + g * SSG, mask=ok, other=0.0).to(tl.float32)
        mn = tl.load(m_ptr + rn * SSN + g * SSG, mask=ok, other=0.0).to(tl.float32)
        acc += sc[:, None] * qx + mn[:, None] * xs[None, :]
    out = tl.sum(acc, axis=1)
    tl.store(y_ptr + tl.program_id(1) * N + rn, out.to(y_ptr.dtype.element_ty), mask=n_ok)


@triton.autotune(**_tune(_configs((4, 8), (2, 3))))
@triton.jit
def _gemv_rows(x_ptr, w_ptr, s_ptr, m_ptr, y_ptr, M, N, KW, NG, SPLIT_GROUPS, SWN, SWG, SSN, SSG,
               G: tl.constexpr, MB: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """2..16 rows through the tensor cores, one group a step: the group's nibbles become exact bf16 values
    q * 2^(4i) (_nibble_f), joined and permuted into a (BLOCK_N, G) tile in k order; the inputs, pre-scaled by
    2^-4i, make one (16, G) x (G, BLOCK_N) dot: sum_k q_k x_k for 16 rows (those past M read zeros). Scale
    and minimum then apply per (row, group)."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    W: tl.constexpr = G // 8
    K = KW * 8
    g_lo = tl.program_id(1) * SPLIT_GROUPS
    g_hi = tl.minimum(g_lo + SPLIT_GROUPS, NG)
    w32 = w_ptr.to(tl.pointer_type(tl.int32))
    rm, rc = tl.arange(0, 16), tl.arange(0, G)
    m_ok = rm < M
    nib = rc // W  # column c of the tile is input k = c of the group: nibble c // W of word c % W
    shift = 4 * nib - 12 * (nib >= 5)
    xscale = 1.0 / (1 << shift).to(tl.float32)
    acc = tl.zeros((16, BLOCK_N), tl.float32)
    for j in range(0, SPLIT_GROUPS):  # from 0: Triton's interpreter wants plain bounds
        g = g_lo + j
        word, hi, g_ok, ok = _group_words(w32, rn, n_ok, SWN, SWG, g, g_hi, W)
        f01 = tl.join(_nibble_f(word, hi, 0), _nibble_f(word, hi, 1))
        f23 = tl.join(_nibble_f(word, hi, 2), _nibble_f(word, hi, 3))
        f45 = tl.join(_nibble_f(word, hi, 4), _nibble_f(word, hi, 5))
        f67 = tl.join(_nibble_f(word, hi, 6), _nibble_f(word, hi, 7))
        # (BN, W, d1, d2, d3) holds nibble i = d1 + 2 d2 + 4 d3; as (BN, d3, d2, d1, W) it is in k order.
        tree = tl.join(tl.join(f01, f23), tl.join(f45, f67))
        wt = tl.reshape(tl.permute(tree, (0, 4, 3, 2, 1)), (BLOCK_N, G))
        xg = tl.load(x_ptr + rm[:, None] * K + g * G + rc[None, :], mask=m_ok[:, None] & g_ok, other=0.0)
        xf = xg.to(tl.float32)
        d = _dot_t((xf * xscale[None, :]).to(xg.dtype), wt)  # (16, BN): sum_k q_k x_k, exact products
        sc = tl.load(s_ptr + rn * SSN + g * SSG, mask=ok, other=0.0).to(tl.float32)
        mn = tl.load(m_ptr + rn * SSN + g * SSG, mask=ok, other=0.0).to(tl.float32)
        acc += d * sc[None, :] + tl.sum(xf, axis=1)[:, None] * mn[None, :]
    dst = y_ptr + (tl.program_id(1) * M + rm[:, None]) * N + rn[None, :]
    tl.store(dst, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _dequant(w_ptr, s_ptr, m_ptr, y_ptr, N, KW, SWN, SWG, SSN, SSG, G: tl.constexpr, BLOCK_N: tl.constexpr):
    """One group of BLOCK_N rows per program -> y (N, K) in y's dtype, in k order."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    g = tl.program_id(1)
    n_ok = rn < N
    W: tl.constexpr = G // 8
    rw = tl.arange(0, W)
    w32 = w_ptr.to(tl.pointer_type(tl.int32))
    word = tl.load(w32 + rn[:, None] * SWN + g * SWG + rw[None, :], mask=n_ok[:, None], other=0)
    hi = word >> 12
    s = tl.load(s_ptr + rn * SSN + g * SSG, mask=n_ok, other=0.0).to(tl.float32)[:, None]
    m = tl.load(m_ptr + rn * SSN + g * SSG, mask=n_ok, other=0.0).to(tl.float32)[:, None]
    dst = y_ptr + rn[:, None] * (KW * 8) + g * G + rw[None, :]
    for i in tl.static_range(8):
        q = _unscaled(_nibble_f(word, hi, i), i)
        tl.store(dst + i * W, (q * s + m).to(y_ptr.dtype.element_ty), mask=n_ok[:, None])


def _block_n(rows: int) -> int:
    return 128 if rows == 1 else 64


def int4_strides(qweight: torch.Tensor, scales: torch.Tensor) -> tuple[int, int, int, int]:
    """(row, group) strides of the int4 words (4-byte units) and of the scales, for qweight (N, K/2)
    row-major or (N, K/G, G/2) in any order of its first two dimensions (Int4Linear's is group-major)."""
    if qweight.dim() == 2:
        swn, swg = qweight.stride(0) // 4, qweight.shape[1] // scales.shape[1] // 4
    else:
        swn, swg = qweight.stride(0) // 4, qweight.stride(1) // 4
    return swn, swg, scales.stride(0), scales.stride(1)


# (N, K) -> K splits of the one-row GEMV, where set (bench tools sweep them: bench/int4_splits.py); else the
# pinned ones below on their GPU, else quant_triton.k_splits' rule. Read by the op's shape function too, so
# the compiled step agrees.
ONE_ROW_SPLITS: dict[tuple[int, int], int] = {}
# On Hopper (H200, session 12): the 12B down projection at 16 splits (640 programs, 7 groups each) takes
# 13.9 us a call against 16.3 at k_splits' 8 (bench/int4_splits.py); with the partials summed inside the
# GEMV (quant_ops.REDUCE_IN_GEMV) the next kernel does not pay for the extra splits: engine b1 324.3 ->
# 334.1 tok/s (without the in-GEMV sum: 315.5 -> 315.1).
# gate|up at 5 splits (1,120 programs of 8 groups, not 896 of 10): 26.3 -> 24.6 us a call in a chain
# (bench/int4_occupancy.py), engine b1 329.8 -> 335.9 tok/s (a/b stage `gu5`, session 17).
# wo at 16 splits in the 4-warp register loop (int4_mma.PINNED): 6.9 -> 6.0 us a call in a chain, engine b1
# 339.5 -> 342.4 tok/s (a/b `wo16_prefetch4`, session 17).
PINNED_SPLITS: dict[tuple[int, int], int] = {(5120, 14336): 16, (28672, 5120): 5, (5120, 4096): 16}
PINNED_SPLITS_ARCH = (9, 0)


def splits(N: int, K: int, group: int, rows: int, device: torch.device) -> int:
    """How many K-splits the decode GEMV uses for an (N, K) weight at `rows` rows (1 = no partials)."""
    if rows == 1 and (N, K) in ONE_ROW_SPLITS:
        return ONE_ROW_SPLITS[(N, K)]
    if rows == 1 and (N, K) in PINNED_SPLITS and _pinned_arch(device):
        return PINNED_SPLITS[(N, K)]
    return k_splits(triton.cdiv(N, _block_n(rows)), K // group, device)


@functools.cache
def _pinned_arch(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) == PINNED_SPLITS_ARCH


def int4_gemv(x, qweight, scales, mins, group: int) -> torch.Tensor:
    """x (M <= 16, K) contiguous @ dequantized int4 (N, K).T -> partial sums (S, M, N): fp32 when S > 1,
    else x's dtype. The product is their sum over the first dimension."""
    M, K = x.shape
    N = qweight.shape[0]
    if M > 16 or K % group or group % 8:
        raise ValueError(f"the int4 GEMV takes at most 16 rows and K a multiple of the group, got {M} x {K}")
    S = splits(N, K, group, M, x.device)
    y = torch.empty(S, M, N, dtype=partials_dtype(S, x.dtype), device=x.device)
    block_n = _block_n(M)
    grid = (triton.cdiv(N, block_n), S)
    per_split = triton.cdiv(K // group, S)
    KW, NG = K // 8, K // group
    strides = int4_strides(qweight, scales)
    if M == 1:
        _gemv1[grid](x, qweight, scales, mins, y, N, KW, NG, per_split, *strides, G=group, MB=1,
                     BLOCK_N=block_n)  # fmt: skip
    else:
        _gemv_rows[grid](x, qweight, scales, mins, y, M, N, KW, NG, per_split, *strides, G=group,
                         MB=triton.next_power_of_2(M), BLOCK_N=block_n)  # fmt: skip
    return y


def int4_dequantize(qweight, scales, mins, group: int, dtype: torch.dtype) -> torch.Tensor:
    N, K = qweight.shape[0], qweight[0].numel() * 2
    y = torch.empty(N, K, dtype=dtype, device=qweight.device)
    grid = (triton.cdiv(N, 64), K // group)
    _dequant[grid](qweight, scales, mins, y, N, K // 8, *int4_strides(qweight, scales), G=group, BLOCK_N=64)
    return y
