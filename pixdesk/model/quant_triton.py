"""Triton kernels for int8 weights on CUDA, and the helpers the int4 kernels (int4_triton.py) share. Imported
only when a quantized linear runs on a GPU.

Decode reads every weight byte once per step, so the kernels are built around the loads: each program owns
BLOCK_N output channels (rows of the weight, contiguous in memory) and walks K, reading the weights as int32
words and turning bytes into floats with integer ops (see `_byte_values`); the few input rows (x) are reread
from L1/L2. One row with FMAs, 2..16 rows with `tl.dot` on a 16-row tile.
Measured on an H200 (bench/kernels.py): the 161 linears of Pixtral-12B take 3.80 ms at one row.
Block sizes are autotuned per (N, K, rows) and the timings kept in Triton's cache.
"""

from __future__ import annotations

import functools
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


_INT8_ONE_ROW = _configs((16,), (512, 1024), warps=(4, 8), stages=(3, 4))  # BLOCK_N fixed: it sets the split
_INT8_ROWS = _configs((32, 64), (256, 512), stages=(3, 4))


@triton.autotune(**_tune(_INT8_ONE_ROW, _INT8_ROWS))
@triton.jit
def _int8_gemv(x_ptr, w_ptr, s_ptr, y_ptr, M, N, K, SPLIT_WORDS, MB: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr):  # fmt: skip
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    if MB == 1:
        # Weights read as int32 words (4 per word); products accumulate elementwise, one reduction at the end.
        # This program takes words [w_lo, w_hi) of each row (the K split) and writes partial sums.
        KW = K // 4
        w_lo = tl.program_id(1) * SPLIT_WORDS
        w_hi = tl.minimum(w_lo + SPLIT_WORDS, KW)
        w32 = w_ptr.to(tl.pointer_type(tl.int32))
        rw0 = tl.arange(0, BLOCK_K // 4)
        acc = tl.zeros((BLOCK_N, BLOCK_K // 4), tl.float32)
        for w0 in range(0, SPLIT_WORDS, BLOCK_K // 4):  # from 0: Triton's interpreter wants plain bounds
            rw = w_lo + w0 + rw0
            w_ok = rw < w_hi
            word = tl.load(w32 + rn[:, None] * KW + rw[None, :], mask=n_ok[:, None] & w_ok[None, :], other=0)
            for i in tl.static_range(4):
                xi = tl.load(x_ptr + 4 * rw + i, mask=w_ok, other=0.0).to(tl.float32)
                acc += _byte_values(word, i) * xi[None, :]
        s = tl.load(s_ptr + rn, mask=n_ok, other=0.0)
        out = (tl.sum(acc, axis=1) * s).to(y_ptr.dtype.element_ty)
        tl.store(y_ptr + tl.program_id(1) * N + rn, out, mask=n_ok)
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


MAX_SPLITS = 8
PROGRAMS_PER_SM = 4  # split K until the grid has this many programs per SM


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter: small, so tests exercise the split
    return torch.cuda.get_device_properties(device).multi_processor_count


def k_splits(programs: int, k_blocks: int, device: torch.device) -> int:
    """How many K-splits a decode GEMV with `programs` programs along N uses (1 = no partials): doubled
    while the grid leaves SMs short of PROGRAMS_PER_SM and each split keeps >= 2 of the `k_blocks` blocks
    along K. wo, w2 and q|k|v of a 12B model give 160-320 programs for an H200's 132 SMs."""
    s = 1
    while s < MAX_SPLITS and programs * s < PROGRAMS_PER_SM * _sm_count(device) and k_blocks >= 4 * s:
        s *= 2
    return s


def partials_dtype(S: int, x_dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if S > 1 else x_dtype


INT8_ONE_ROW_BLOCK_N = 16
SPLIT_ALIGN_WORDS = 128  # each split starts at a multiple of 512 bytes of a row


# One-row int8 GEMVs split K where the grid would leave SMs idle. The 161 linears of a 12B model on an H200,
# timed as the kernels alone (bench/kernels.py LINEARS=int8,int8_split, session 6): 3.54 ms split against
# 3.74 unsplit. The partials' sum is fused into the next kernel by the compiled decode step.
INT8_SPLIT_K = True


def int8_splits(N: int, K: int, rows: int, device: torch.device) -> int:
    if rows != 1 or not INT8_SPLIT_K:
        return 1
    return k_splits(triton.cdiv(N, INT8_ONE_ROW_BLOCK_N), K // 4 // SPLIT_ALIGN_WORDS, device)


def int8_gemv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x (M <= 16, K) contiguous @ (q * s).T -> partial sums (S, M, N) (fp32 when S > 1, else x's dtype)."""
    M, K = x.shape
    N = qweight.shape[0]
    if M > 16 or K % 8:
        raise ValueError(f"the GEMV kernels take at most 16 rows and K a multiple of 8, got {M} x {K}")
    S = int8_splits(N, K, M, x.device)
    y = torch.empty(S, M, N, dtype=partials_dtype(S, x.dtype), device=x.device)
    words = triton.cdiv(triton.cdiv(K // 4, S), SPLIT_ALIGN_WORDS) * SPLIT_ALIGN_WORDS
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), S)  # noqa: E731
    _int8_gemv[grid](x, qweight, scales, y, M, N, K, words, MB=1 if M == 1 else 16)
    return y
