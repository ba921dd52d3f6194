"""Triton kernels for int8 weights on CUDA, and the helpers the int4 kernels (int4_triton.py) share. Imported
only when a quantized linear runs on a GPU.

Decode reads every weight byte once per step, so the kernels are built around the loads: each program owns
BLOCK_N output channels (rows of the weight, contiguous in memory) and walks K, reading the weights as int32
words and turning bytes into floats with integer ops (see `_int8_floats`); the few input rows (x) are reread
from L1/L2. One row with FMAs, 2..16 rows with `tl.dot` on a 16-row tile.
Measured on an H200: the 161 linears of Pixtral-12B took 3.54 ms at one row (bench/kernels.py) with a
shift-and-mask byte conversion (5.2 instructions a weight, bench/sass.py); with one PRMT a byte (4.2) int8
decode at batch 1 went from 214.7 to 233.3 tok/s (`--stage int8`, session 8).
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
    return {"configs": configs, "key": ["N", "K", "MB", "GATED"], "cache_results": True, "do_bench": _bench,
            "prune_configs_by": {"early_config_prune": prune}}  # fmt: skip


def _configs(block_ns, block_ks, warps=(4,), stages=(3,)) -> list:
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bn in block_ns for bk in block_ks for w in warps for s in stages
    ]  # fmt: skip


_ASM = tl.constexpr(not _INTERPRET)  # inline PTX on the GPU; plain integer ops under the interpreter


@triton.jit
def _int8_floats(word):
    """int32 words of four int8 weights -> four fp32 tensors 2^23 + 128 + q (subtract 8388736.0 for q), in
    1.25 instructions a weight: one XOR with 0x80808080 a word (each byte becomes q + 128, unsigned), then
    per byte one PRMT that places it under 2^23's exponent (bits 0x4B0000bb). Triton's own int8 -> fp32 is
    an I2F, which runs at a quarter of the FMA rate and bounded the kernel below the memory bandwidth."""
    if _ASM:
        # prmt.b32 d, a, b, sel: byte j of d = byte sel[j] of {b, a} (a: 0-3, b: 4-7); sel 0x754i puts a's
        # byte i lowest, then b's bytes 4, 5 (zero) and 7 (0x4B).
        f0, f1, f2, f3 = tl.inline_asm_elementwise(
            """{
            .reg .b32 f, m;
            xor.b32 f, $4, 0x80808080;
            mov.b32 m, 0x4B000000;
            prmt.b32 $0, f, m, 0x7540;
            prmt.b32 $1, f, m, 0x7541;
            prmt.b32 $2, f, m, 0x7542;
            prmt.b32 $3, f, m, 0x7543;
            }""",
            "=r,=r,=r,=r,r", [word], dtype=(tl.int32, tl.int32, tl.int32, tl.int32), is_pure=True, pack=1,
        )  # fmt: skip
    else:
        f0 = ((word + 128) & 0xFF) | 0x4B000000
        f1 = (((word >> 8) + 128) & 0xFF) | 0x4B000000
        f2 = (((word >> 16) + 128) & 0xFF) | 0x4B000000
        f3 = (((word >> 24) + 128) & 0xFF) | 0x4B000000
    return (f0.to(tl.float32, bitcast=True), f1.to(tl.float32, bitcast=True), f2.to(tl.float32, bitcast=True),
            f3.to(tl.float32, bitcast=True))  # fmt: skip


@triton.jit
def _gate_up_rows(pid, N, GATED: tl.constexpr, BLOCK_N: tl.constexpr):
    """The weight rows program `pid` of a one-row GEMV reads: BLOCK_N consecutive ones, or for a gate|up
    weight (GATED: gate rows [0, N/2), up rows after) BLOCK_N / 2 gate rows interleaved with the matching
    up rows, so that one program holds both factors of silu(gate) * up. Rows past the end read as N."""
    r = tl.arange(0, BLOCK_N)
    if GATED:
        j = pid * (BLOCK_N // 2) + r // 2
        return tl.where(j < N // 2, j + (r % 2) * (N // 2), N)
    return pid * BLOCK_N + r


@triton.jit
def _store_gated(y_ptr, out, pid, N, BLOCK_N: tl.constexpr):
    """_gate_up_rows' interleaved outputs (BLOCK_N,) fp32 -> silu(gate) * up into y (1, N / 2), each factor
    first rounded to y's dtype as the linear's output would be; the product in fp32, rounded once (the
    kernel Inductor generates for the unfused form does the same)."""
    DT: tl.constexpr = y_ptr.dtype.element_ty
    gate, up = tl.split(tl.reshape(out.to(DT).to(tl.float32), (BLOCK_N // 2, 2)))
    j = pid * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
    tl.store(y_ptr + j, (gate * tl.sigmoid(gate) * up).to(DT), mask=j < N // 2)


_INT8_ONE_ROW = _configs((16,), (512, 1024), warps=(4, 8), stages=(3, 4))  # BLOCK_N fixed: it sets the split
_INT8_ROWS = _configs((32, 64), (256, 512), stages=(3, 4))


@triton.autotune(**_tune(_INT8_ONE_ROW, _INT8_ROWS))
@triton.jit
def _int8_gemv(x_ptr, w_ptr, s_ptr, y_ptr, M, N, K, SPLIT_WORDS, MB: tl.constexpr, GATED: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """MB == 1: one row, K split into partials (S, 1, N), or GATED (gate|up, no split): silu(gate) * up
    (1, N / 2) (_gate_up_rows). MB == 16: 2..16 rows on the tensor cores."""
    rn = _gate_up_rows(tl.program_id(0), N, GATED, BLOCK_N)
    n_ok = rn < N
    if MB == 1:
        # Weights read as int32 words (4 per word, 4 words a thread: 128-bit loads), each word turned into
        # four floats (_int8_floats) and multiplied into one accumulator per word with four FMAs. This
        # program takes words [w_lo, w_hi) of each row (the K split) and writes partial sums.
        KW = K // 4
        w_lo = tl.program_id(1) * SPLIT_WORDS
        w_hi = tl.minimum(w_lo + SPLIT_WORDS, KW)
        w32 = w_ptr.to(tl.pointer_type(tl.int32))
        rw0, rk0 = tl.arange(0, BLOCK_K // 4), tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_N, BLOCK_K // 4), tl.float32)
        for w0 in range(0, SPLIT_WORDS, BLOCK_K // 4):  # from 0: Triton's interpreter wants plain bounds
            rw = w_lo + w0 + rw0
            w_ok = rw < w_hi
            word = tl.load(w32 + rn[:, None] * KW + rw[None, :], mask=n_ok[:, None] & w_ok[None, :], other=0)
            rk = 4 * (w_lo + w0) + rk0
            x = tl.load(x_ptr + rk, mask=rk < 4 * w_hi, other=0.0).to(tl.float32)
            # tl.split takes the last dimension: x[4w + 2a + b] -> (b = 0, b = 1) -> (a = 0, a = 1)
            x_even, x_odd = tl.split(tl.reshape(x, (BLOCK_K // 4, 2, 2)))
            x0, x2 = tl.split(x_even)
            x1, x3 = tl.split(x_odd)
            f0, f1, f2, f3 = _int8_floats(word)
            acc += (f0 - 8388736.0) * x0[None, :]
            acc += (f1 - 8388736.0) * x1[None, :]
            acc += (f2 - 8388736.0) * x2[None, :]
            acc += (f3 - 8388736.0) * x3[None, :]
        out = tl.sum(acc, axis=1) * tl.load(s_ptr + rn, mask=n_ok, other=0.0)
        if GATED:
            _store_gated(y_ptr, out, tl.program_id(0), N, BLOCK_N)
        else:
            tl.store(y_ptr + tl.program_id(1) * N + rn, out.to(y_ptr.dtype.element_ty), mask=n_ok)
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
MIN_BLOCKS_PER_SPLIT = 2  # ... as long as each split keeps this many blocks along K


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter: small, so tests exercise the split
    return torch.cuda.get_device_properties(device).multi_processor_count


def k_splits(programs: int, k_blocks: int, device: torch.device) -> int:
    """How many K-splits a decode GEMV with `programs` programs along N uses (1 = no partials): doubled
    while the grid leaves SMs short of PROGRAMS_PER_SM and each split keeps >= MIN_BLOCKS_PER_SPLIT of the
    `k_blocks` blocks along K. wo, w2 and q|k|v of a 12B model give 160-320 programs for an H200's 132 SMs."""
    s = 1
    while (
        s < MAX_SPLITS
        and programs * s < PROGRAMS_PER_SM * _sm_count(device)
        and k_blocks >= 2 * MIN_BLOCKS_PER_SPLIT * s
    ):
        s *= 2
    return s


@triton.jit
def summed_partials(ptr, offs, mask, part_stride, NP: tl.constexpr, DT: tl.constexpr):
    """A linear's NP K-split partials at offs summed in fp32 and rounded to DT (as quant_ops.sum_partials
    does), returned as fp32. NP is a compile-time constant so the loop unrolls and every partial's load is
    in flight at once (a runtime loop made them dependent rounds: 5.4 us an add + RMSNorm, session 9)."""
    total = tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)
    for i in tl.static_range(1, NP):
        total += tl.load(ptr + i * part_stride + offs, mask=mask, other=0.0).to(tl.float32)
    return total.to(DT).to(tl.float32)


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
    _int8_gemv[grid](x, qweight, scales, y, M, N, K, words, MB=1 if M == 1 else 16, GATED=False)
    return y


def int8_gated(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """One row x (1, K) through an int8 gate|up weight (N, K) -> silu(gate) * up (1, N / 2) in x's dtype.
    Only for weights the one-row GEMV does not split along K (`int8_splits(N, K, 1) == 1`)."""
    (M, K), N = x.shape, qweight.shape[0]
    if M != 1 or K % 8:
        raise ValueError(f"the gated int8 GEMV takes one row and K a multiple of 8, got {M} x {K}")
    y = torch.empty(1, N // 2, dtype=x.dtype, device=x.device)
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), 1)  # noqa: E731
    words = triton.cdiv(K // 4, SPLIT_ALIGN_WORDS) * SPLIT_ALIGN_WORDS  # the whole row: one split
    _int8_gemv[grid](x, qweight, scales, y, M, N, K, words, MB=1, GATED=True)
    return y
