"""Decode attention for the static step on CUDA: one query per slot against its cache, split along the keys
(flash-decoding), reading the cache in its own (slots, positions, kv heads, head_dim) layout.

Why a kernel: the matmul form needs K as (B, Hkv, D, S), which this layout gives only through a copy per
layer and step (measured on an H200 at the 4,352-key bucket: 0.65 ms per step for 1 slot, 4.9 ms for 8,
about 1.1 TB/s; bench/kernels.py). Here each program reads a 256-key slice of one slot's KV head once and
serves that head's G = H / Hkv query heads with two tensor-core products; a second small kernel merges
the slices' partial softmaxes. Keys at or past a row's length are skipped; the static step gives an idle
slot (parked on the cache's spare position) a length of one key.

The slice length follows the grid (`split_keys`): one slot at the 4,352-key bucket is only 8 KV heads, so
256-key slices gave 136 programs, about one per SM, each reading its 256 keys in four dependent steps
(0.52 ms for 40 layers, 1.4 TB/s). Shorter slices put several programs on every SM. (Merging inside the
split kernel, the last program of a head through an atomic count, measured slower: 0.72 ms, b1 -2%.) The
merge takes 32 of a head's columns a program (COMBINE_COLUMNS): at one slot 128 programs instead of 32, each
reading a quarter of the head's partials (H200, session 15: 2.35 -> 1.95 us a call, int4 b1 333.8 -> 335.5
tok/s in the a/b stage).

Before attention, the static step runs `rope_cache_write`: one small kernel that sums the q|k|v projection's
K-split partials, rotates q and k and writes k and v into the cache, where Inductor ran three (session 7 on
an H200: graph replay 6.638 -> 6.532 ms, b1 148.2 -> 150.2 tok/s). Doing that work inside the split kernel
instead (every program rotating its q, the owner of the new key's slice writing it and attending it from
registers) measured slower: 0.52 ms for 40 layers against 0.33 (bench/results/partial-2026-12-03-h200-s7).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from pixdesk.model import pdl
from pixdesk.model.quant_triton import _DOT_F32, summed_partials

SPLITS = (64, 128, 256)  # keys per program, by grid size (split_keys)
BLOCK_S = 64  # keys per inner step
PROGRAMS_PER_SM = 4  # enough programs that every SM keeps several key slices in flight
FIXED_SPLIT: int | None = None  # a fixed slice length (bench/kernels.py sweeps it); None: split_keys
PARTIAL_LAUNCH: dict = {}  # num_warps / num_stages of the split kernel (bench/kernels.py sweeps them)
COMBINE_COLUMNS: int | None = 32  # head columns a merge program takes (None: the whole head)


def split_keys(rows_x_kv_heads: int, n_keys: int, n_sms: int) -> int:
    """The longest slice (fewest partials to merge) that still gives PROGRAMS_PER_SM programs per SM."""
    if FIXED_SPLIT:
        return FIXED_SPLIT
    for split in reversed(SPLITS):
        if rows_x_kv_heads * triton.cdiv(n_keys, split) >= PROGRAMS_PER_SM * n_sms:
            return split
    return SPLITS[0]


# The key count and split count are runtime values Triton would otherwise specialize on (divisibility by 16),
# and the merge width a power of two of at least MIN_MERGE: each key bucket then reuses the same few compiled
# variants. At engine start (warm-up of every bucket, warm caches) loading ~60 variants took 2.76 s of the
# 21.6 s to ready on an H200 (session 7).
MIN_MERGE = 64


@triton.jit(do_not_specialize=["n_keys", "n_splits"])
def _partial(q_ptr, k_ptr, v_ptr, len_ptr, slot_ptr, o_ptr, m_ptr, l_ptr, n_keys, n_splits, sm_scale,
             stride_kb, stride_kt, HKV: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr,
             SPLIT: tl.constexpr, BLOCK_S: tl.constexpr, ROW_SLOTS: tl.constexpr,
             USE_PDL: tl.constexpr):  # fmt: skip
    bh = tl.program_id(0)
    sp = tl.program_id(1)
    b, h = bh // HKV, bh % HKV
    pdl.wait(USE_PDL)
    pdl.release(USE_PDL)
    length = tl.minimum(tl.load(len_ptr + b), n_keys)
    slot = tl.load(slot_ptr + b) if ROW_SLOTS else b
    rg, rd = tl.arange(0, GP), tl.arange(0, D)
    g_ok = rg < G
    q = tl.load(q_ptr + (bh * G + rg[:, None]) * D + rd[None, :], mask=g_ok[:, None], other=0.0)  # (GP, D)
    m_i = tl.full((GP,), float("-inf"), tl.float32)
    l_i = tl.zeros((GP,), tl.float32)
    acc = tl.zeros((GP, D), tl.float32)
    kv_base = slot.to(tl.int64) * stride_kb + h * D
    start = sp * SPLIT
    stop = tl.minimum(start + SPLIT, length)
    for s0 in range(start, stop, BLOCK_S):
        rs = s0 + tl.arange(0, BLOCK_S)
        s_ok = rs < stop
        off = kv_base + rs[:, None] * stride_kt + rd[None, :]
        k = tl.load(k_ptr + off, mask=s_ok[:, None], other=0.0)  # (BLOCK_S, D)
        v = tl.load(v_ptr + off, mask=s_ok[:, None], other=0.0)  # with k (no change on an H200, session 8)
        if _DOT_F32:
            scores = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)))
        else:
            scores = tl.dot(q, tl.trans(k))  # (GP, BLOCK_S) fp32
        scores = tl.where(s_ok[None, :], scores * sm_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if _DOT_F32:
            pv = tl.dot(p, v.to(tl.float32))
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    row = (bh * G + rg) * n_splits + sp  # partials laid out (B, H, splits[, D])
    tl.store(o_ptr + row[:, None] * D + rd[None, :], acc, mask=g_ok[:, None])
    tl.store(m_ptr + row, m_i, mask=g_ok)
    tl.store(l_ptr + row, l_i, mask=g_ok)


@triton.jit
def _rope_write(qkv_ptr, part_stride, cos_ptr, sin_ptr, q_ptr, k_ptr, v_ptr, pos_ptr, stride_kb, stride_kt,
                NP: tl.constexpr, H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
                USE_PDL: tl.constexpr):  # fmt: skip
    """Program (b, j): head j of row b's q|k|v partials, summed and rotated (model/rope.py's apply_rope:
    pairs (2i, 2i + 1) by angle i in fp32): query heads (j < H) into q, KV heads as the rotated key and the
    value into the cache at the row's position (row b is slot b)."""
    b = tl.program_id(0)
    j = tl.program_id(1)
    DT: tl.constexpr = k_ptr.dtype.element_ty
    rd = tl.arange(0, D)
    every = rd < D
    row = b * (H + 2 * HKV) * D
    pdl.wait(USE_PDL)
    pdl.release(USE_PDL)
    c = tl.load(cos_ptr + b * (D // 2) + rd // 2)
    s = tl.load(sin_ptr + b * (D // 2) + rd // 2)
    x = summed_partials(qkv_ptr, row + j * D + rd, every, part_stride, NP, DT)
    pair = summed_partials(qkv_ptr, row + j * D + (rd ^ 1), every, part_stride, NP, DT)  # its pair partner
    rotated = (x * c + tl.where(rd % 2 == 0, -pair, pair) * s).to(DT)
    if j < H:
        tl.store(q_ptr + (b * H + j) * D + rd, rotated)
    else:
        h = j - H
        dst = b.to(tl.int64) * stride_kb + tl.load(pos_ptr + b).to(tl.int64) * stride_kt + h * D
        tl.store(k_ptr + dst + rd, rotated)
        v = summed_partials(qkv_ptr, row + (H + HKV + h) * D + rd, every, part_stride, NP, DT)
        tl.store(v_ptr + dst + rd, v.to(DT))


@triton.jit(do_not_specialize=["n_splits"])
def _combine(o_ptr, m_ptr, l_ptr, out_ptr, n_splits, D: tl.constexpr, DC: tl.constexpr, NSP: tl.constexpr,
             USE_PDL: tl.constexpr):  # fmt: skip
    """Merge one (row, query head)'s split partials over DC of its D columns (program_id(1)): a softmax over
    splits weighted by their maxima."""
    bh = tl.program_id(0)
    pdl.wait(USE_PDL)
    pdl.release(USE_PDL)
    rs, rd = tl.arange(0, NSP), tl.program_id(1) * DC + tl.arange(0, DC)
    ok = rs < n_splits
    m = tl.load(m_ptr + bh * n_splits + rs, mask=ok, other=float("-inf"))  # empty splits hold -inf
    l_part = tl.load(l_ptr + bh * n_splits + rs, mask=ok, other=0.0)
    top = tl.max(m, axis=0)
    w = tl.where(ok & (m > float("-inf")), tl.exp(m - top), 0.0)
    acc = tl.load(o_ptr + (bh * n_splits + rs[:, None]) * D + rd[None, :], mask=ok[:, None], other=0.0)
    out = tl.sum(acc * w[:, None], axis=0) / tl.sum(l_part * w, axis=0)
    tl.store(out_ptr + bh * D + rd, out.to(out_ptr.dtype.element_ty))


@torch.library.custom_op("pixdesk::decode_attention", mutates_args=())
def decode_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    lengths: torch.Tensor,
    n_keys: int,
    slots: torch.Tensor | None = None,
) -> torch.Tensor:
    """q (B, H, D); keys/values the cache (n_slots, T, Hkv, D); lengths (B,) keys per row; keys < n_keys.

    Row b reads slot b, or slot slots[b] when given (several rows of one slot: a short prefill as a batch of
    single-token queries, each seeing the keys before its own position).
    Returns (B, H, D): softmax(q k^T / sqrt(D)) v over each row's first min(length, n_keys) keys.
    """
    B, H, D = q.shape
    Hkv = keys.shape[2]
    G = H // Hkv
    split = split_keys(B * Hkv, n_keys, _sm_count(q.device))
    n_splits = triton.cdiv(n_keys, split)
    q = q.contiguous()
    partial = torch.empty(B, H, n_splits, D, dtype=torch.float32, device=q.device)
    m = torch.empty(B, H, n_splits, dtype=torch.float32, device=q.device)
    l_sum = torch.empty_like(m)
    out = torch.empty_like(q)
    nsp = max(MIN_MERGE, triton.next_power_of_2(n_splits))
    use_pdl = pdl.enabled(q.device)
    _partial[(B * Hkv, n_splits)](
        q, keys, values, lengths, lengths if slots is None else slots, partial, m, l_sum, n_keys, n_splits,
        D**-0.5, keys.stride(0), keys.stride(1), HKV=Hkv, G=G, GP=max(16, triton.next_power_of_2(G)), D=D,
        SPLIT=split, BLOCK_S=min(PARTIAL_LAUNCH.get("block_s", BLOCK_S), split), ROW_SLOTS=slots is not None,
        USE_PDL=use_pdl, **{k: v for k, v in PARTIAL_LAUNCH.items() if k != "block_s"}, **pdl.launch(use_pdl),
    )  # fmt: skip
    dc = COMBINE_COLUMNS if COMBINE_COLUMNS and D % COMBINE_COLUMNS == 0 else D
    _combine[(B * H, D // dc)](partial, m, l_sum, out, n_splits, D=D, DC=dc, NSP=nsp, USE_PDL=use_pdl,
                               **pdl.launch(use_pdl))  # fmt: skip
    return out


def warm_variants(keys: torch.Tensor, values: torch.Tensor, n_heads: int, rows: int, buckets: list[int],
                  row_slots: bool) -> int:  # fmt: skip
    """Launch the kernels once per key bucket for `rows` rows, one key a row, on a layer's cache tensors.

    A bucket can give the kernels another slice length or merge width (compile-time constants), and Triton
    compiles a kernel on its first launch with them: ~0.25 s each. Left to the first capture of a bucket,
    that lands on a request: the first follow-up question after a cold image prompt took 528 ms on an H200
    instead of 13 (75.6 ms with this warm-up, session 7). Done here, each variant is compiled once or loaded
    from Triton's cache. Only the keys' first position is read and the
    outputs are dropped. Returns the number of launches."""
    dev = keys.device
    q = torch.zeros(rows, n_heads, keys.shape[-1], dtype=keys.dtype, device=dev)
    lengths = torch.ones(rows, dtype=torch.long, device=dev)
    slots = torch.zeros(rows, dtype=torch.long, device=dev) if row_slots else None
    for n_keys in buckets:
        decode_attention(q, keys, values, lengths, n_keys, slots)
    return len(buckets)


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":  # Triton's interpreter (CPU tests)
        return 132
    return torch.cuda.get_device_properties(device).multi_processor_count


@decode_attention.register_fake
def _(q, keys, values, lengths, n_keys, slots=None):
    return torch.empty_like(q)


@torch.library.custom_op("pixdesk::rope_cache_write", mutates_args=("keys", "values"))
def rope_cache_write(
    qkv_parts: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    positions: torch.Tensor,
    n_heads: int,
) -> torch.Tensor:
    """The decode step's one kernel between the q|k|v projection and attention, one row per slot: the
    projection's K-split partials (S, B, (H + 2 Hkv) D) summed, q and k rotated with the tables cos/sin
    (B, D/2), k and v written to slot b at positions[b]. Returns the rotated q (B, H, D).

    Instead of Inductor's three kernels for the same (~0.15 ms a step at one slot on an H200:
    bench/results/partial-2026-12-03-h200-s7/profile-bf16-1624f1a.txt)."""
    S, B, _ = qkv_parts.shape
    Hkv, D = keys.shape[2], keys.shape[3]
    q = torch.empty(B, n_heads, D, dtype=keys.dtype, device=keys.device)
    qkv_parts, cos, sin = qkv_parts.contiguous(), cos.contiguous(), sin.contiguous()
    use_pdl = pdl.enabled(keys.device)
    _rope_write[(B, n_heads + Hkv)](
        qkv_parts, qkv_parts.stride(0), cos, sin, q, keys, values, positions, keys.stride(0), keys.stride(1),
        NP=S, H=n_heads, HKV=Hkv, D=D, USE_PDL=use_pdl, num_warps=1, **pdl.launch(use_pdl),
    )  # fmt: skip
    return q


@rope_cache_write.register_fake
def _(qkv_parts, cos, sin, keys, values, positions, n_heads):
    return keys.new_empty(qkv_parts.shape[1], n_heads, keys.shape[3])
