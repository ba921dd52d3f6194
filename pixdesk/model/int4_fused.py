"""The one-row int4 mma GEMV (int4_mma.py) with the work of the kernel after it in its epilogue.

Where the GEMV splits K (a grid of 4 programs an SM), each program stores its fp32 partial, counts itself done
on an atomic counter of its row block, and the last one sums the partials in split order (as
quant_triton.summed_partials does, so the results round as the unfused kernels' do), finishes, and resets the
counter for the next call (so a CUDA graph replays it). Three forms:
- `reduced`: the product itself, summed. The add + RMSNorm after wo and down is one program a row; reading
  8 fp32 partial rows was most of its time, one bf16 row is not, and down can then take 16 splits (H200,
  session 12: int4 b1 316.8 -> 324.3 -> 334.1 tok/s in the a/b stage). On: quant_ops.REDUCE_IN_GEMV.
- `qkv_rope`: q|k|v -> q rotated, k rotated and v written into the KV cache at the row's position. A
  program's 128 rows are one head (head_dim 128), and RoPE pairs (2i, 2i + 1) lie inside it; the
  rope_cache_write kernel is gone (7.18 + 2.28 -> 8.56 us a layer in a graph chain, bench/fused_chain.py).
  On: quant_ops.FUSED_ROPE.
- `gated`: gate|up -> silu(gate) * up. A program's 128 rows are 64 gate rows interleaved with the matching
  up rows, so its epilogue holds both factors. Measured slower than the GEMV + silu_mul (29.35 against
  24.97 + 1.21 us): off, quant_ops.FUSED_GATED.
The counters are shared by every call on a device, so these kernels assume one stream at a time (the decode
step's). Rounding follows silu_mul.py and decode_attention._rope_write.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from pixdesk.model import int4_mma, pdl
from pixdesk.model.int4_triton import int4_strides, splits
from pixdesk.model.quant_ops import interleaved_scales
from pixdesk.model.quant_triton import _bench

GATED_SPLIT: int | None = None  # the gate|up GEMV's K splits (None: the GEMV's own choice, 5 for the 12B)
COUNTERS = 4096  # row blocks a GEMV may have (the 12B LM head has 1,024; fused GEMVs have <= 224)


@functools.cache
def _counters(device: torch.device) -> torch.Tensor:
    """Zeroed int32 counters, one per row block; every fused GEMV leaves them zero (its last program resets
    its block's). Made on the first call, which is a warm-up run before any CUDA graph capture."""
    return torch.zeros(COUNTERS, dtype=torch.int32, device=device)


@triton.jit
def _split_done(out, y_ptr, cnt_ptr, BLOCK_N: tl.constexpr, NSPLIT: tl.constexpr):
    """Store this program's partial (BLOCK_N,) at its split's row of the scratch y (NSPLIT, blocks *
    BLOCK_N) and count it done; True in the block's last program to finish."""
    pid = tl.program_id(0)
    idx = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    tl.store(y_ptr + tl.program_id(1) * tl.num_programs(0) * BLOCK_N + idx, out)
    tl.debug_barrier()  # every thread's store precedes the count's release
    done = tl.atomic_add(cnt_ptr + pid, 1, sem="acq_rel", scope="gpu")
    return done == NSPLIT - 1


@triton.jit
def _split_total(y_ptr, cnt_ptr, BLOCK_N: tl.constexpr, NSPLIT: tl.constexpr):
    """In the last program of a block: the partials summed in split order (fp32), the counter reset."""
    pid = tl.program_id(0)
    idx = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    stride = tl.num_programs(0) * BLOCK_N
    total = tl.load(y_ptr + idx, cache_modifier=".cg")  # from L2: other SMs wrote them
    for i in tl.static_range(1, NSPLIT):
        total += tl.load(y_ptr + i * stride + idx, cache_modifier=".cg")
    tl.store(cnt_ptr + pid, 0)
    return total


@triton.jit
def _gated_rows(N, BLOCK_N: tl.constexpr):
    """Weight rows of this program: gate row j and up row H + j for j in its BLOCK_N / 2 columns,
    interleaved (tile row 2i is gate, 2i + 1 up); rows past the end read row N - 1 (not stored)."""
    r = tl.arange(0, BLOCK_N)
    j = tl.program_id(0) * (BLOCK_N // 2) + r // 2
    return tl.where(j < N // 2, j + (r % 2) * (N // 2), N - 1)


@triton.jit
def _store_silu(total, out_ptr, H, BLOCK_N: tl.constexpr):
    """(BLOCK_N,) interleaved gate/up sums -> silu(gate) * up for the program's BLOCK_N / 2 columns."""
    DT: tl.constexpr = out_ptr.dtype.element_ty
    gate, up = tl.split(tl.reshape(total, (BLOCK_N // 2, 2)))
    gate, up = gate.to(DT).to(tl.float32), up.to(DT).to(tl.float32)
    silu = (gate / (1.0 + tl.exp(-gate))).to(DT).to(tl.float32)
    cols = tl.program_id(0) * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
    tl.store(out_ptr + cols, (silu * up).to(DT), mask=cols < H)


@triton.autotune(configs=int4_mma._configs(), key=["N", "KW", "SWN"], cache_results=True, do_bench=_bench,
                 prune_configs_by={"early_config_prune": int4_mma._prune})  # fmt: skip
@triton.jit
def _gated(x_ptr, w_ptr, s_ptr, m_ptr, y_ptr, cnt_ptr, out_ptr, N, KW, NG, SPLIT_GROUPS, SWN, SWG, SSN, SSG,
           BLOCK_N: tl.constexpr, NSPLIT: tl.constexpr, USE_PDL: tl.constexpr, PREFETCH: tl.constexpr,
           STAGES: tl.constexpr, PACKED: tl.constexpr):  # fmt: skip
    rows = _gated_rows(N, BLOCK_N)
    out = int4_mma._split_partial(x_ptr, w_ptr, s_ptr, m_ptr, rows, NG, SPLIT_GROUPS, SWN, SWG, SSN, SSG,
                                  BLOCK_N, USE_PDL, PREFETCH, STAGES, PACKED)  # fmt: skip
    if NSPLIT == 1:
        _store_silu(out, out_ptr, N // 2, BLOCK_N)
    else:
        if _split_done(out, y_ptr, cnt_ptr, BLOCK_N, NSPLIT):
            _store_silu(_split_total(y_ptr, cnt_ptr, BLOCK_N, NSPLIT), out_ptr, N // 2, BLOCK_N)


@triton.jit
def _store_rope(total, cos_ptr, sin_ptr, q_ptr, k_ptr, v_ptr, pos_ptr, stride_kt, H, HKV, D: tl.constexpr):
    """Head h = program 0 of q|k|v, summed -> rotated into q (h < H), rotated into the cache's keys, or as
    is into its values, at slot 0's position."""
    DT: tl.constexpr = k_ptr.dtype.element_ty
    h = tl.program_id(0)
    rd = tl.arange(0, D)
    x = total.to(DT).to(tl.float32)
    if h < H + HKV:
        even, odd = tl.split(tl.reshape(x, (D // 2, 2)))
        c = tl.load(cos_ptr + tl.arange(0, D // 2))
        s = tl.load(sin_ptr + tl.arange(0, D // 2))
        rotated = tl.reshape(tl.join(even * c + (-odd) * s, odd * c + even * s), (D,)).to(DT)
        if h < H:
            tl.store(q_ptr + h * D + rd, rotated)
        else:
            tl.store(k_ptr + tl.load(pos_ptr).to(tl.int64) * stride_kt + (h - H) * D + rd, rotated)
    else:
        tl.store(v_ptr + tl.load(pos_ptr).to(tl.int64) * stride_kt + (h - H - HKV) * D + rd, x.to(DT))


@triton.autotune(configs=int4_mma._configs(), key=["N", "KW", "SWN"], cache_results=True, do_bench=_bench,
                 prune_configs_by={"early_config_prune": int4_mma._prune})  # fmt: skip
@triton.jit
def _qkv_rope(x_ptr, w_ptr, s_ptr, m_ptr, y_ptr, cnt_ptr, cos_ptr, sin_ptr, q_ptr, k_ptr, v_ptr, pos_ptr,
              stride_kt, H, HKV, N, KW, NG, SPLIT_GROUPS, SWN, SWG, SSN, SSG, BLOCK_N: tl.constexpr,
              NSPLIT: tl.constexpr, USE_PDL: tl.constexpr, PREFETCH: tl.constexpr,
              STAGES: tl.constexpr, PACKED: tl.constexpr):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    out = int4_mma._split_partial(x_ptr, w_ptr, s_ptr, m_ptr, rows, NG, SPLIT_GROUPS, SWN, SWG, SSN, SSG,
                                  BLOCK_N, USE_PDL, PREFETCH, STAGES, PACKED)  # fmt: skip
    if NSPLIT == 1:
        _store_rope(out, cos_ptr, sin_ptr, q_ptr, k_ptr, v_ptr, pos_ptr, stride_kt, H, HKV, BLOCK_N)
    else:
        if _split_done(out, y_ptr, cnt_ptr, BLOCK_N, NSPLIT):
            total = _split_total(y_ptr, cnt_ptr, BLOCK_N, NSPLIT)
            _store_rope(total, cos_ptr, sin_ptr, q_ptr, k_ptr, v_ptr, pos_ptr, stride_kt, H, HKV, BLOCK_N)


def _launch(kernel, grid, args: tuple, N: int, K: int, S: int, device: torch.device) -> None:
    """The kernel at its pinned config for (N, K) on this GPU (int4_mma.PINNED), else autotuned. args: x,
    qweight, scales, mins first."""
    use_pdl = pdl.enabled(device)
    packed = interleaved_scales(args[2], args[3])
    consts = {"BLOCK_N": int4_mma.BLOCK_N, "NSPLIT": S, "USE_PDL": use_pdl, "PACKED": packed,
              **pdl.launch(use_pdl)}  # fmt: skip
    pinned = int4_mma.pinned_launch(N, K, device)
    if pinned is None:
        kernel[grid](*args, **consts)
    else:
        kernel.fn[grid](*args, **consts, **pinned)


def _geometry(x: torch.Tensor, qweight, scales, mins, split: int | None) -> tuple:
    """Checks -> (N, K, the K splits S, the GEMV's launch arguments after its outputs)."""
    K, N = x.shape[1], qweight.shape[0]
    group = K // scales.shape[1]
    if not int4_mma.supported(x, group) or K % int4_mma.GROUP or not int4_mma.aligned(scales, mins):
        raise ValueError(f"the fused int4 GEMVs take one bf16 row and group size 128, got {tuple(x.shape)}")
    S = split or splits(N, K, int4_mma.GROUP, 1, x.device)
    if S > 1 and triton.cdiv(N, int4_mma.BLOCK_N) > COUNTERS:
        raise ValueError(f"a split GEMV of {N} rows needs more than the {COUNTERS} block counters")
    NG = K // int4_mma.GROUP
    return N, K, S, (N, K // 8, NG, triton.cdiv(NG, S), *int4_strides(qweight, scales))


def gated(x: torch.Tensor, qweight, scales, mins, split: int | None = None) -> torch.Tensor:
    """x (1, K) bf16 through an int4 gate|up weight (2H, K) -> silu(gate) * up (1, H) bf16, one kernel.
    `split`: the K splits (default: the GEMV's own choice, int4_triton.splits)."""
    N, K, S, shared = _geometry(x, qweight, scales, mins, split or GATED_SPLIT)
    blocks = triton.cdiv(N // 2, int4_mma.BLOCK_N // 2)
    out = torch.empty(1, N // 2, dtype=x.dtype, device=x.device)
    y = torch.empty(S, blocks * int4_mma.BLOCK_N, dtype=torch.float32, device=x.device)
    args = (x, qweight, scales, mins, y, _counters(x.device), out, *shared)
    _launch(_gated, (blocks, S), args, N, K, S, x.device)
    return out


def qkv_rope(x: torch.Tensor, qweight, scales, mins, cos, sin, keys, values, positions, n_heads: int,
             split: int | None = None) -> torch.Tensor:  # fmt: skip
    """x (1, K) bf16 through an int4 q|k|v weight ((H + 2 Hkv) D, K) with D = 128, one kernel: q and k
    rotated by cos/sin (1, D/2) fp32, k and v written to slot 0 of the cache (n_slots, T, Hkv, D) at
    positions[0]. Returns q (1, H, D)."""
    N, K, S, shared = _geometry(x, qweight, scales, mins, split)
    Hkv, D = keys.shape[2], keys.shape[3]
    if D != int4_mma.BLOCK_N or N != (n_heads + 2 * Hkv) * D:
        raise ValueError(f"qkv_rope takes heads of {int4_mma.BLOCK_N} and a q|k|v weight, got D={D}, N={N}")
    q = torch.empty(1, n_heads, D, dtype=keys.dtype, device=x.device)
    blocks = n_heads + 2 * Hkv
    y = torch.empty(S, blocks * D, dtype=torch.float32, device=x.device)
    args = (x, qweight, scales, mins, y, _counters(x.device), cos.contiguous(), sin.contiguous(), q, keys,
            values, positions, keys.stride(1), n_heads, Hkv, *shared)  # fmt: skip
    _launch(_qkv_rope, (blocks, S), args, N, K, S, x.device)
    return q


@triton.autotune(configs=int4_mma._configs(), key=["N", "KW", "SWN"], cache_results=True, do_bench=_bench,
                 prune_configs_by={"early_config_prune": int4_mma._prune})  # fmt: skip
@triton.jit
def _reduced(x_ptr, w_ptr, s_ptr, m_ptr, y_ptr, cnt_ptr, out_ptr, N, KW, NG, SPLIT_GROUPS, SWN, SWG, SSN, SSG,
             BLOCK_N: tl.constexpr, NSPLIT: tl.constexpr, USE_PDL: tl.constexpr, PREFETCH: tl.constexpr,
             STAGES: tl.constexpr, PACKED: tl.constexpr):  # fmt: skip
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.minimum(rn, N - 1)
    out = int4_mma._split_partial(x_ptr, w_ptr, s_ptr, m_ptr, rows, NG, SPLIT_GROUPS, SWN, SWG, SSN, SSG,
                                  BLOCK_N, USE_PDL, PREFETCH, STAGES, PACKED)  # fmt: skip
    if NSPLIT == 1:
        tl.store(out_ptr + rn, out.to(out_ptr.dtype.element_ty), mask=rn < N)
    else:
        if _split_done(out, y_ptr, cnt_ptr, BLOCK_N, NSPLIT):
            total = _split_total(y_ptr, cnt_ptr, BLOCK_N, NSPLIT)
            tl.store(out_ptr + rn, total.to(out_ptr.dtype.element_ty), mask=rn < N)


def reduced(x: torch.Tensor, qweight, scales, mins, split: int | None = None) -> torch.Tensor:
    """x (1, K) bf16 @ an int4 weight (N, K) -> (1, 1, N) bf16: the K-split partials summed (in split order,
    rounded once) by each row block's last program, so the next kernel reads one row, not S fp32 ones."""
    N, K, S, shared = _geometry(x, qweight, scales, mins, split)
    blocks = triton.cdiv(N, int4_mma.BLOCK_N)
    out = torch.empty(1, 1, N, dtype=x.dtype, device=x.device)
    y = torch.empty(S, blocks * int4_mma.BLOCK_N, dtype=torch.float32, device=x.device)
    _launch(_reduced, (blocks, S), (x, qweight, scales, mins, y, _counters(x.device), out, *shared), N, K, S,
            x.device)  # fmt: skip
    return out
