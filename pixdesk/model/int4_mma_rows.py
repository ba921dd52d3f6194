"""The int4 tensor-core GEMV of int4_mma.py for 2..8 rows (batched decode): each row of x in its own column.

The one-row kernel feeds the same x to all 8 columns of `mma.m16n8k16` and keeps one. Here column n is row n
of x: lane group g of a warp (lanes 4g..4g+3) supplies the B operand of column g, and every tile row it
holds is g modulo 8, so a tile row r loads x row r % 8 (clamped to the rows there are) as its input pairs.
The weights' A fragment is unchanged, so the loop does the same instructions a weight as for one row and
each lane receives the sums of its two rows for columns 2c and 2c + 1 (c = its place in the quad): the
accumulator slot (row, 4c + e) holds column 2c + e for e < 2; the store writes those (no quad replication,
so no 1/4). Under Triton's interpreter (CPU tests) each column's sums are computed per word as plain tensor
ops from x's row n directly and put in the same slots.

The inputs come packed once a call as int32 pairs (`pack_pairs`) and load as (BLOCK_N, 16) int32 tiles, the
weights' own shape and dtype: Triton then gives both the same blocked layout, the A fragment. Loaded as bf16,
the inputs' tiles took a layout of their own and pulled the weights' tile into it (wrong sums on the GPU,
session 13; tests/model/test_kernel_sass.py checks the layout). Measured on an H200: int4 b8 1151 -> 1335
tok/s (`--stage int4`, session 13).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pixdesk.model import int4_mma, pdl
from pixdesk.model.int4_mma import _load_sm, _load_sm_words
from pixdesk.model.int4_triton import int4_strides, splits
from pixdesk.model.quant_ops import interleaved_scales
from pixdesk.model.quant_triton import _ASM, _INTERPRET, _bench, partials_dtype

MAX_ROWS = 8  # one mma column a row


def _mma_rows_asm() -> str:
    """PTX for two rows x 4 words of one group: int4_mma's weight pairs and mma chains, then per row h and
    column q (2c + q) acc += s_h (D - 128 X_q) + m_h X_q into slot 4h + q; slots 4h + 2, 4h + 3 pass as
    they are."""
    out = int4_mma._mma_body() + [".reg .f32 f;"]
    out += ["add.f32 d8, d8, d12;", "add.f32 d9, d9, d13;"]  # X of columns 2c, 2c + 1
    for h in range(2):
        for q in range(2):
            d = f"d{2 * h + q}"
            out += [f"add.f32 {d}, {d}, d{4 + 2 * h + q};", f"fma.rn.f32 {d}, d{8 + q}, 0fC3000000, {d};"]
            out += [f"fma.rn.f32 f, ${56 + 4 * h}, d{8 + q}, ${64 + 4 * h + q};"]
            out += [f"fma.rn.f32 ${4 * h + q}, ${48 + 4 * h}, {d}, f;"]
        out += [f"mov.f32 ${4 * h + i}, ${64 + 4 * h + i};" for i in (2, 3)]
    return "\n".join(out + ["}"])


_MMA_ROWS = tl.constexpr(_mma_rows_asm())


@triton.jit
def _load_x_rows(xp_ptr, xr, rw, g):
    """Group g's input pairs as four (BLOCK_N, 16) int32 tensors: tile row r reads the packed row at offset
    xr[r]. Int32 tiles of 16 contiguous words, like the weights' tile: the same blocked layout (a bf16 load
    of 16 would take a layout of its own, and the weights' tile with it: no longer the A fragment)."""
    xg = xp_ptr + xr[:, None] + g * 64 + rw[None, :]
    return tl.load(xg), tl.load(xg + 16), tl.load(xg + 32), tl.load(xg + 48)


@triton.jit
def _group_rows(word, xp0, xp1, xp2, xp3, s, m, acc, xp_ptr, KP, M, rw, g):
    if _ASM:
        acc = tl.inline_asm_elementwise(
            _MMA_ROWS, int4_mma._MMA_CONSTRAINTS,
            [word, xp0, xp1, xp2, xp3, s[:, None], m[:, None], acc], dtype=tl.float32, is_pure=True, pack=8,
        )  # fmt: skip
    else:
        for n in tl.static_range(MAX_ROWS):
            xg = xp_ptr + tl.minimum(n, M - 1) * KP + g * 64 + rw
            p0, p1, p2, p3 = tl.load(xg), tl.load(xg + 16), tl.load(xg + 32), tl.load(xg + 48)
            col = tl.sum(int4_mma._word_sums(word, p0, p1, p2, p3, s, m), axis=1)
            acc += tl.where(rw[None, :] == 4 * (n // 2) + n % 2, col[:, None], 0.0)
    return acc


def _configs() -> list:
    return [triton.Config({"STAGES": s}, num_warps=w) for w in (4, 8) for s in (1, 3)]


def _prune(configs, named_args, **kwargs):
    return configs[:1] if _INTERPRET else configs


@triton.autotune(configs=_configs(), key=["M", "N", "KW", "SWN"], cache_results=True, do_bench=_bench,
                 prune_configs_by={"early_config_prune": _prune})  # fmt: skip
@triton.jit
def _gemv_rows_mma(xp_ptr, w_ptr, s_ptr, m_ptr, y_ptr, M, N, KP, KW, NG, SPLIT_GROUPS, SWN, SWG, SSN, SSG,
                   BLOCK_N: tl.constexpr, USE_PDL: tl.constexpr, STAGES: tl.constexpr,
                   PACKED: tl.constexpr):  # fmt: skip
    """x (M <= 8, K) bf16, packed as pairs (pack_pairs: rows of KP = K / 2 words), @ the int4 weight's rows
    [pid0 * BLOCK_N, +BLOCK_N) over split pid1's groups -> y[pid1, :M, rows] (fp32 partials, or y's dtype
    when unsplit)."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.minimum(rn, N - 1)
    rw = tl.arange(0, 16)
    xr = tl.minimum(rn % 8, M - 1) * KP  # the mma column (x row) this tile row's lane group feeds
    g_lo = tl.program_id(1) * SPLIT_GROUPS
    g_hi = tl.minimum(g_lo + SPLIT_GROUPS, NG)
    w_rows = w_ptr.to(tl.pointer_type(tl.int32)) + rows[:, None] * SWN + rw[None, :]
    sm_rows = rows * SSN
    acc = tl.zeros((BLOCK_N, 16), tl.float32)
    pdl.wait(USE_PDL)
    pdl.release(USE_PDL)
    if STAGES > 1:
        for i in tl.range(0, g_hi - g_lo, num_stages=STAGES):
            g = g_lo + i
            s, m = _load_sm_words(s_ptr, m_ptr, sm_rows + g * SSG, PACKED)
            xp0, xp1, xp2, xp3 = _load_x_rows(xp_ptr, xr, rw, g)
            acc = _group_rows(tl.load(w_rows + g * SWG), xp0, xp1, xp2, xp3, s, m, acc, xp_ptr, KP, M, rw, g)
    else:
        for i in range(0, g_hi - g_lo):
            g = g_lo + i
            s, m = _load_sm(s_ptr, m_ptr, sm_rows, g * SSG, PACKED)
            xp0, xp1, xp2, xp3 = _load_x_rows(xp_ptr, xr, rw, g)
            acc = _group_rows(tl.load(w_rows + g * SWG), xp0, xp1, xp2, xp3, s, m, acc, xp_ptr, KP, M, rw, g)
    col = 2 * (rw // 4) + rw % 4  # slot 4c + e holds column 2c + e for e < 2
    keep = (rw % 4 < 2) & (col < M)
    dst = y_ptr + tl.program_id(1) * M * N + col[None, :] * N + rn[:, None]
    tl.store(dst, acc.to(y_ptr.dtype.element_ty), mask=(rn < N)[:, None] & keep[None, :])


def supported(x: torch.Tensor, group: int) -> bool:
    """2..8 bf16 rows with group size 128."""
    return 1 < x.shape[0] <= MAX_ROWS and x.dtype == torch.bfloat16 and group == int4_mma.GROUP


def pack_pairs(x: torch.Tensor) -> torch.Tensor:
    """x (M, K) bf16 -> (M, K / 2) int32: per group of 128, word 16 j + w holds the bf16 pair (x[16 j + w],
    x[16 j + 64 + w]) that the weights' nibble pair (j, j + 4) of word w multiplies (int4_mma's packing)."""
    M, K = x.shape
    pairs = x.view(M, K // 128, 2, 64).transpose(2, 3).contiguous()  # (M, NG, 64, 2): lo, hi
    return pairs.view(torch.int32).view(M, K // 2)


def int4_gemv_rows_mma(x: torch.Tensor, qweight, scales, mins) -> torch.Tensor:
    """x (2..8, K) bf16 contiguous @ dequantized int4 (N, K).T -> partial sums (S, M, N), S as the 2..16-row
    GEMV of int4_triton splits (so the op's shape function holds for both)."""
    (M, K), N = x.shape, qweight.shape[0]
    if not supported(x, K // scales.shape[1]) or K % int4_mma.GROUP or not int4_mma.aligned(scales, mins):
        raise ValueError(f"the int4 rows GEMV takes 2..{MAX_ROWS} bf16 rows, group 128, got {tuple(x.shape)}")
    S = splits(N, K, int4_mma.GROUP, M, x.device)
    y = torch.empty(S, M, N, dtype=partials_dtype(S, x.dtype), device=x.device)
    NG = K // int4_mma.GROUP
    use_pdl = pdl.enabled(x.device)
    grid = (triton.cdiv(N, int4_mma.BLOCK_N), S)
    xp = pack_pairs(x)
    _gemv_rows_mma[grid](xp, qweight, scales, mins, y, M, N, K // 2, K // 8, NG, triton.cdiv(NG, S),
                         *int4_strides(qweight, scales), BLOCK_N=int4_mma.BLOCK_N, USE_PDL=use_pdl,
                         PACKED=interleaved_scales(scales, mins), **pdl.launch(use_pdl))  # fmt: skip
    return y
