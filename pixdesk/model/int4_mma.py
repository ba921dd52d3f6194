"""The one-row int4 GEMV of decode at batch 1, on the tensor cores (mma.sync), for group size 128.

int4_triton's one-row kernel turns each nibble into an fp32 and multiplies it with an FMA: ~5 instructions
a weight, and it ran at 1.55 TB/s of int4 bytes on an H200, issue-bound (the int8 kernel, at 4.2
instructions a byte, reaches ~3.3 TB/s; 5 a weight is 10 a byte). Here the loop spends ~1.9 (bench/sass.py):
- Two nibbles become one bf16x2 register with one LOP3: nibbles j and j + 4 of a word (bits 4j and 16 + 4j)
  masked in place under the exponent of 128 (`(word >> 4j) & 0x000F000F | 0x43004300`) read as the bf16 pair
  (128 + q_j, 128 + q_j+4), exactly. Pairs 1..3 first shift the word right by 4j: 7 integer instructions
  per word of 8 weights.
- `mma.sync.m16n8k16` multiplies those pairs, as they are, with the inputs, accumulating in fp32. The weights
  are the A operand (16 rows a warp, k in pairs), the inputs B, the same in all 8 columns, so every lane
  receives its own rows' sums. With the (BLOCK_N, 16) tile of a group's words in Triton's blocked layout
  (a lane holds 4 consecutive words of rows r, r + 8, ... where r = lane / 4), a lane's registers are
  already an A fragment: lane g of a quad supplies rows g and g + 8, lanes c = 0..3 of the quad words
  4c..4c+3. Which k a register slot stands for does not matter as long as A and B agree, so each lane pairs
  its own inputs (x[16j + w], x[16(j + 4) + w]) with its weight pair (j, j + 4) of word w: no shuffles, no
  shared memory. One mma sums 16 of a quad's k; 8 mma a group.
- The group's sum D = sum_k (128 + q_k) x_k is exact up to fp32 accumulation. A second chain of mma with
  A = 1 gives X = sum_k x_k, and with w = q s + m: sum_k w_k x_k = s D + (m - 128 s) X per (row, group).
  Each lane of a quad receives the same D and X, so the lanes' sum is 4x the row's and the end scales by
  1/4 (exact).
Rows past N read row N - 1 (not stored). K is split into fp32 partials like int4_triton's GEMV (`splits`).
Under Triton's interpreter (CPU tests) the same algebra runs as plain tensor ops, per word, not per quad.
Measured on an H200: the 161 linears of a 12B model at one row in 2.92 ms on row-major buffers (session 9;
tinygemm 3.56, int4_triton 3.95), ~2.0 TB/s of int4 bytes, with neither a register prefetch nor a cp.async
pipeline helping: the loads were the bound, each group tile 128 scattered 64-byte pieces and each scale a
sector of its own. On Int4Linear's group-major buffers (quant_ops.group_major: a tile is 8 KB contiguous)
the same kernel takes 2.45 ms (2.5 TB/s; the LM head 3.5 TB/s), session 10. Weights and scales come by
strides, so both layouts work.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pixdesk.model import pdl
from pixdesk.model.int4_triton import int4_strides, splits
from pixdesk.model.quant_ops import interleaved_scales
from pixdesk.model.quant_triton import _ASM, _INTERPRET, _bench, partials_dtype

GROUP = 128  # a group is 16 int32 words: 4 lanes of a quad x 4 words
BLOCK_N = 128  # rows a program: sets the K split, so fixed (warps and stages are tuned)
# (N, K) -> (num_warps, PREFETCH, STAGES) for the Pixtral-12B decoder's shapes on Hopper, from chain timings
# (bench/int4_configs.py, bench/int4_occupancy.py: each config in a 40-weight CUDA-graph chain, H200) checked
# in the engine (the a/b stage); other shapes and GPUs autotune, whose lone-launch timings are noise on the
# small shapes. The K splits are int4_triton.PINNED_SPLITS'.
PINNED: dict[tuple[int, int], tuple[int, bool, int]] = {
    (6144, 5120): (8, True, 1),  # q|k|v: register prefetch, 8 warps
    (5120, 4096): (4, True, 1),  # wo: register prefetch, 4 warps, 16 splits (session 17: b1 +0.85%)
    (28672, 5120): (4, False, 3),  # gate|up: cp.async pipeline, 2 groups in flight (5 splits)
    (5120, 14336): (4, True, 1),  # down: register prefetch, 4 warps (session 17: 16.4 -> 13.6 us, b1 +1%)
    (131072, 5120): (4, False, 3),  # LM head
}
PINNED_ARCH = (9, 0)
# (N, K) -> a register budget for the pinned config (Triton's maxnreg). On interleaved scales ptxas gives
# q|k|v's 8-warp register loop 60 registers and a slower schedule; allowed 72 it takes them: 8.8 -> 7.1 us a
# call in a chain (bench/int4_occupancy.py), engine b1 329.8 -> 332.0 tok/s (a/b `qkv_regs72`, session 17).
# Caps below the natural count spill in the loop (64 on the pipelined loop: +10-20%).
MAXNREG: dict[tuple[int, int], int] = {(6144, 5120): 72}
USE_PINNED = True  # off: every shape autotunes (bench/int4_configs.py, the a/b stage's "autotuned")


def _mma_group_asm() -> str:
    """PTX for two rows x 4 words of one group (one lane's part of a 16-row mma tile): adds s (D - 128 X) and
    m X to the rows' first two accumulator slots.

    Operands (el = 4 h + e: row h of the two, word e): $0..$7 accumulators out; inputs $8..$15 words, the
    input pairs of nibble pairs j = 0..3 at $16 + 8j + el, the rows' scales $48.. and minimums $56.. (fp32),
    accumulators in $64.. Inputs that are the same for all four words are read from el = 0 and 4.
    """
    out = _mma_body()
    # d0 / d2: D of rows g / g + 8 (column 2c); d8: X. Then D - 128 X, the scale and the minimum.
    out += ["add.f32 d8, d8, d12;", "add.f32 d0, d0, d4;", "add.f32 d2, d2, d6;"]
    out += ["fma.rn.f32 d0, d8, 0fC3000000, d0;", "fma.rn.f32 d2, d8, 0fC3000000, d2;"]
    for h in range(2):
        out += [f"fma.rn.f32 ${4 * h}, ${48 + 4 * h}, d{2 * h}, ${64 + 4 * h};"]
        out += [f"fma.rn.f32 ${4 * h + 1}, ${56 + 4 * h}, d8, ${65 + 4 * h};"]
        out += [f"mov.f32 ${4 * h + i}, ${64 + 4 * h + i};" for i in (2, 3)]
    return "\n".join(out + ["}"])


def _mma_body() -> list[str]:
    """The PTX both group forms share (an open block): the 32 weight pairs of two rows x 4 words, then the 8
    mma of the group into two chains, d0..d7 (weights x inputs; d0..d3 and d4..d7 each the m16n8 fragment
    {row g col 2c, row g col 2c + 1, row g + 8 col 2c, row g + 8 col 2c + 1}) and d8..d15 (ones x inputs:
    X of columns 2c, 2c + 1 in d8, d9 and d12, d13)."""
    a = lambda h, e, j: f"a{16 * h + 4 * e + j}"  # noqa: E731  (bf16x2 weight pair j of row h, word e)
    xp = lambda e, j: f"${16 + 8 * j + e}"  # noqa: E731  (the input pair it multiplies; row 0's copy)
    out = ["{", ".reg .b32 t, one, a<32>;", ".reg .f32 d<16>;"]
    out += ["mov.b32 one, 0x3F803F80;"] + [f"mov.f32 d{i}, 0f00000000;" for i in range(16)]
    for h in range(2):
        for e in range(4):
            word = f"${8 + 4 * h + e}"
            out.append(f"lop3.b32 {a(h, e, 0)}, {word}, 0x000F000F, 0x43004300, 0xEA;")  # (w & m) | c
            for j in range(1, 4):
                out.append(f"shr.u32 t, {word}, {4 * j};")
                out.append(f"lop3.b32 {a(h, e, j)}, t, 0x000F000F, 0x43004300, 0xEA;")
    pairs = [(e, j) for e in range(4) for j in range(4)]
    mma = "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"
    for m in range(8):
        (ep, jp), (eq, jq) = pairs[2 * m], pairs[2 * m + 1]
        b = f"{{{xp(ep, jp)}, {xp(eq, jq)}}}"
        d = ", ".join(f"d{4 * (m % 2) + i}" for i in range(4))  # two chains, for latency
        ones = ", ".join(f"d{8 + 4 * (m % 2) + i}" for i in range(4))
        w = f"{{{a(0, ep, jp)}, {a(1, ep, jp)}, {a(0, eq, jq)}, {a(1, eq, jq)}}}"
        out.append(f"{mma} {{{d}}}, {w}, {b}, {{{d}}};")
        out.append(f"{mma} {{{ones}}}, {{one, one, one, one}}, {b}, {{{ones}}};")
    return out


_MMA_GROUP = tl.constexpr(_mma_group_asm())
_MMA_CONSTRAINTS = tl.constexpr(",".join(["=f"] * 8 + ["r"] * 40 + ["f"] * 24))


@triton.jit
def _load_bf16(ptr):
    """bf16 values at (BLOCK_N,) addresses -> fp32, in the addresses' own layout: one 16-bit load a row. (A
    tl.load of a strided vector gets a one-row-a-thread layout and a conversion through shared memory.)"""
    if _ASM:
        v = tl.inline_asm_elementwise("ld.global.nc.b16 $0, [$1];", "=h,l", [ptr], dtype=tl.bfloat16,
                                      is_pure=True, pack=1)  # fmt: skip
    else:
        v = tl.load(ptr)
    return v.to(tl.float32)


@triton.jit
def _load_bf16_as_words(ptr, idx):
    """bf16 ptr[idx] -> fp32 through a 4-byte load of the word holding it (cp.async copies 4 bytes or more;
    the buffer must be 4-byte aligned)."""
    word = tl.load(ptr.to(tl.pointer_type(tl.int32)) + idx // 2)
    return ((word >> ((idx & 1) * 16)) << 16).to(tl.float32, bitcast=True)


@triton.jit
def _load_sm(s_ptr, m_ptr, sm_rows, sg, PACKED: tl.constexpr):
    """The rows' scales and minimums of a group as fp32: one bf16x2 word a row where they are interleaved
    (PACKED: quant.interleave_scales), else a 16-bit load each."""
    if PACKED:
        return _unpack_sm(_load_word(s_ptr.to(tl.pointer_type(tl.int32)) + (sm_rows + sg) // 2))
    return _load_bf16(s_ptr + sm_rows + sg), _load_bf16(m_ptr + sm_rows + sg)


@triton.jit
def _load_word(ptr):
    """int32 at (BLOCK_N,) addresses, in the addresses' own layout (as _load_bf16)."""
    if _ASM:
        return tl.inline_asm_elementwise("ld.global.nc.b32 $0, [$1];", "=r,l", [ptr], dtype=tl.int32,
                                         is_pure=True, pack=1)  # fmt: skip
    return tl.load(ptr)


@triton.jit
def _load_sm_words(s_ptr, m_ptr, idx, PACKED: tl.constexpr):
    """The same through 4-byte loads only (what cp.async copies): the bf16x2 word of both where interleaved,
    else the word holding each."""
    if PACKED:
        return _unpack_sm(tl.load(s_ptr.to(tl.pointer_type(tl.int32)) + idx // 2))
    return _load_bf16_as_words(s_ptr, idx), _load_bf16_as_words(m_ptr, idx)


@triton.jit
def _unpack_sm(word):
    """An interleaved (scale, minimum) bf16x2 word -> both as fp32 (the scale in the low half)."""
    return (word << 16).to(tl.float32, bitcast=True), (word & -65536).to(tl.float32, bitcast=True)


@triton.jit
def _load_x(x_ptr, rw, g):
    """Group g's 128 inputs as four (16,) vectors: the pairs that nibble pairs j = 0..3 of word w multiply."""
    xg = x_ptr + g * 128 + rw
    x0, x1, x2, x3 = tl.load(xg), tl.load(xg + 16), tl.load(xg + 32), tl.load(xg + 48)
    x4, x5, x6, x7 = tl.load(xg + 64), tl.load(xg + 80), tl.load(xg + 96), tl.load(xg + 112)
    return _x_pair(x0, x4), _x_pair(x1, x5), _x_pair(x2, x6), _x_pair(x3, x7)


@triton.jit
def _load_group(x_ptr, w_rows, s_ptr, m_ptr, sm_rows, rw, g, SWG, SSG, PACKED: tl.constexpr):
    """Group g's loads: the rows' words (BLOCK_N, 16), scales and minimums (BLOCK_N,) fp32, and its 128
    inputs as the four (16,) vectors of pairs that nibble pairs j = 0..3 of word w multiply."""
    s, m = _load_sm(s_ptr, m_ptr, sm_rows, g * SSG, PACKED)
    xp0, xp1, xp2, xp3 = _load_x(x_ptr, rw, g)
    return tl.load(w_rows + g * SWG), s, m, xp0, xp1, xp2, xp3


@triton.jit
def _x_pair(lo, hi):
    """Two bf16 tensors -> int32 tensors holding lo in bits 0..15 and hi in 16..31 (a bf16x2 register)."""
    lo16 = lo.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return lo16 | (hi.to(tl.int16, bitcast=True).to(tl.int32) << 16)


@triton.jit
def _bf16_lo(pair):
    return (pair << 16).to(tl.float32, bitcast=True)


@triton.jit
def _bf16_hi(pair):
    return (pair & -65536).to(tl.float32, bitcast=True)


@triton.jit
def _group(word, xp0, xp1, xp2, xp3, s, m, acc):
    """acc (BLOCK_N, 16) += this group's s (D - 128 X) + m X, spread over the accumulator slots; s and m
    (BLOCK_N,) fp32 are the rows' scale and minimum."""
    if _ASM:
        acc = tl.inline_asm_elementwise(
            _MMA_GROUP, _MMA_CONSTRAINTS,
            [word, xp0[None, :], xp1[None, :], xp2[None, :], xp3[None, :], s[:, None], m[:, None], acc],
            dtype=tl.float32, is_pure=True, pack=8,
        )  # fmt: skip
    else:
        acc += _word_sums(word, xp0, xp1, xp2, xp3, s, m)
    return acc


@triton.jit
def _word_sums(word, xp0, xp1, xp2, xp3, s, m):
    """The group's sums per word as plain tensor ops (Triton's interpreter: no mma): (BLOCK_N, 16) whose
    slot (row, w) is s D_w + (m - 128 s) X_w over word w's 8 nibbles, for the (16,) input pairs xp0..xp3."""
    d = tl.zeros(word.shape, tl.float32)
    xs = tl.zeros(xp0.shape, tl.float32)
    for j in tl.static_range(4):
        if j == 0:
            xp = xp0
        elif j == 1:
            xp = xp1
        elif j == 2:
            xp = xp2
        else:
            xp = xp3
        lo, hi = _bf16_lo(xp), _bf16_hi(xp)
        q_lo = ((word >> (4 * j)) & 0xF).to(tl.float32)
        q_hi = ((word >> (16 + 4 * j)) & 0xF).to(tl.float32)
        d += (128.0 + q_lo) * lo[None, :] + (128.0 + q_hi) * hi[None, :]
        xs += lo + hi
    return s[:, None] * (d - 128.0 * xs[None, :]) + m[:, None] * xs[None, :]


def _configs() -> list:
    pairs = [(w, p) for w in (4, 8) for p in (True, False)]
    staged = [triton.Config({"PREFETCH": False, "STAGES": s}, num_warps=w) for w in (4, 8) for s in (3, 4, 6)]
    return [triton.Config({"PREFETCH": p, "STAGES": 1}, num_warps=w) for w, p in pairs] + staged


def _prune(configs, named_args, **kwargs):
    return configs[:1] if _INTERPRET else configs


@triton.jit
def _split_partial(x_ptr, w_ptr, s_ptr, m_ptr, rows, NG, SPLIT_GROUPS, SWN, SWG, SSN, SSG,
                   BLOCK_N: tl.constexpr, USE_PDL: tl.constexpr, PREFETCH: tl.constexpr,
                   STAGES: tl.constexpr, PACKED: tl.constexpr):  # fmt: skip
    """One row x (1, K) bf16 @ the int4 weight's `rows` (BLOCK_N,) (each < N) over the groups of split
    program_id(1) -> fp32 sums (BLOCK_N,). Waits for the previous kernel (PDL, pdl.py) after loading what
    no kernel writes: with the register prefetch, the first group's weights. PACKED: scales and minimums
    interleaved (one word a row and group)."""
    rw = tl.arange(0, 16)
    g_lo = tl.program_id(1) * SPLIT_GROUPS
    g_hi = tl.minimum(g_lo + SPLIT_GROUPS, NG)
    w32 = w_ptr.to(tl.pointer_type(tl.int32))
    acc = tl.zeros((BLOCK_N, 16), tl.float32)
    # No masks in the loop: the caller's rows are all valid, and the loop runs over this split's groups only.
    w_rows = w32 + rows[:, None] * SWN + rw[None, :]
    sm_rows = rows * SSN
    if PREFETCH and STAGES == 1:  # the first group's weights, scales and minimums: no kernel writes them
        g_first = tl.minimum(g_lo, NG - 1)  # an empty last split (NG < S * SPLIT_GROUPS) stays in bounds
        word = tl.load(w_rows + g_first * SWG)
        s, m = _load_sm(s_ptr, m_ptr, sm_rows, g_first * SSG, PACKED)
    pdl.wait(USE_PDL)  # from here on the previous kernel's output (x) is complete
    pdl.release(USE_PDL)
    if STAGES > 1:
        # Triton's pipeliner: STAGES - 1 groups in flight in shared memory (cp.async), the scales and
        # minimums read as the 4-byte words that hold them (cp.async copies no less). (A form that took its
        # first group from registers loaded before the PDL wait measured slower in the engine: 315.1 vs 323.4
        # tok/s, bench/NOTES.md session 14.)
        for i in tl.range(0, g_hi - g_lo, num_stages=STAGES):
            g = g_lo + i
            s0, m0 = _load_sm_words(s_ptr, m_ptr, sm_rows + g * SSG, PACKED)
            xp0, xp1, xp2, xp3 = _load_x(x_ptr, rw, g)
            acc = _group(tl.load(w_rows + g * SWG), xp0, xp1, xp2, xp3, s0, m0, acc)
    elif PREFETCH:  # each step issues the next group's loads before the mma of this one
        xp0, xp1, xp2, xp3 = _load_x(x_ptr, rw, g_lo)
        for i in range(0, g_hi - g_lo):  # from 0: Triton's interpreter wants plain bounds
            g_next = tl.minimum(g_lo + i + 1, g_hi - 1)  # the last step reloads its own group (unused)
            nxt = _load_group(x_ptr, w_rows, s_ptr, m_ptr, sm_rows, rw, g_next, SWG, SSG, PACKED)
            acc = _group(word, xp0, xp1, xp2, xp3, s, m, acc)
            word, s, m, xp0, xp1, xp2, xp3 = nxt
    else:
        for i in range(0, g_hi - g_lo):
            word, s, m, xp0, xp1, xp2, xp3 = _load_group(
                x_ptr, w_rows, s_ptr, m_ptr, sm_rows, rw, g_lo + i, SWG, SSG, PACKED
            )
            acc = _group(word, xp0, xp1, xp2, xp3, s, m, acc)
    out = tl.sum(acc, axis=1)
    if _ASM:
        out = out * 0.25  # each lane of a quad added the whole group's sums
    return out


@triton.autotune(configs=_configs(), key=["N", "KW", "SWN"], cache_results=True, do_bench=_bench,
                 prune_configs_by={"early_config_prune": _prune})  # fmt: skip
@triton.jit
def _gemv1_mma(x_ptr, w_ptr, s_ptr, m_ptr, y_ptr, N, KW, NG, SPLIT_GROUPS, SWN, SWG, SSN, SSG,
               BLOCK_N: tl.constexpr, USE_PDL: tl.constexpr, PREFETCH: tl.constexpr,
               STAGES: tl.constexpr, PACKED: tl.constexpr):  # fmt: skip
    """One row x (1, K) bf16 @ the int4 weight's rows [pid0 * BLOCK_N, +BLOCK_N) over the groups of split
    pid1 -> y[pid1, rows] (fp32 partials, or y's dtype when unsplit). Rows past N read row N - 1 (their sums
    are not stored)."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    out = _split_partial(x_ptr, w_ptr, s_ptr, m_ptr, tl.minimum(rn, N - 1), NG, SPLIT_GROUPS, SWN, SWG, SSN,
                         SSG, BLOCK_N, USE_PDL, PREFETCH, STAGES, PACKED)  # fmt: skip
    tl.store(y_ptr + tl.program_id(1) * N + rn, out.to(y_ptr.dtype.element_ty), mask=rn < N)


def supported(x: torch.Tensor, group: int) -> bool:
    """One bf16 row with group size 128 (the decoder's linears of the Pixtral family)."""
    return x.shape[0] == 1 and x.dtype == torch.bfloat16 and group == GROUP


def aligned(scales: torch.Tensor, mins: torch.Tensor) -> bool:
    """The pipelined loop reads scales and minimums as 4-byte words: each buffer 4-byte aligned, or the two
    interleaved (one word a row and group)."""
    return interleaved_scales(scales, mins) or (scales.data_ptr() % 4 == 0 and mins.data_ptr() % 4 == 0)


def int4_gemv_mma(x: torch.Tensor, qweight, scales, mins) -> torch.Tensor:
    """x (1, K) bf16 contiguous @ dequantized int4 (N, K).T -> partial sums (S, 1, N): fp32 when S > 1,
    else bf16; the product is their sum over the first dimension (as int4_triton.int4_gemv)."""
    K, N = x.shape[1], qweight.shape[0]
    if not supported(x, K // scales.shape[1]) or K % GROUP or not aligned(scales, mins):
        raise ValueError(f"the int4 mma GEMV takes one bf16 row and group size {GROUP}, got {tuple(x.shape)}")
    S = splits(N, K, GROUP, 1, x.device)
    y = torch.empty(S, 1, N, dtype=partials_dtype(S, x.dtype), device=x.device)
    NG = K // GROUP
    grid = (triton.cdiv(N, BLOCK_N), S)
    use_pdl = pdl.enabled(x.device)
    strides = int4_strides(qweight, scales)
    args = (x, qweight, scales, mins, y, N, K // 8, NG, triton.cdiv(NG, S), *strides)
    consts = {"BLOCK_N": BLOCK_N, "USE_PDL": use_pdl, "PACKED": interleaved_scales(scales, mins),
              **pdl.launch(use_pdl)}  # fmt: skip
    pinned = pinned_launch(N, K, x.device)
    if pinned is None:
        _gemv1_mma[grid](*args, **consts)
    else:
        _gemv1_mma.fn[grid](*args, **consts, **pinned)
    return y


def pinned_launch(N: int, K: int, device: torch.device) -> dict | None:
    """The pinned config of an (N, K) weight on this GPU as launch arguments (PREFETCH, STAGES, num_warps and
    any register cap), or None (autotune)."""
    if _INTERPRET or not USE_PINNED or (N, K) not in PINNED:
        return None
    if torch.cuda.get_device_capability(device) != PINNED_ARCH:
        return None
    warps, prefetch, stages = PINNED[(N, K)]
    cap = {"maxnreg": MAXNREG[(N, K)]} if (N, K) in MAXNREG else {}
    return {"PREFETCH": prefetch, "STAGES": stages, "num_warps": warps, **cap}
