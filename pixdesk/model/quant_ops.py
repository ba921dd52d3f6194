"""Matrix products with quantized weights, picked by device and by the number of rows.

- CUDA, few rows (decode: up to 16 rows): Triton kernels that read the packed weights once and dequantize
  in registers (`quant_triton.py` int8, `int4_triton.py` int4); the weight bytes are the whole cost there.
- CUDA, many rows (prefill): dequantize into a bf16 temporary, then one cuBLAS GEMM (compute-bound, so the
  extra pass over the weight is a few percent).
- CPU: torch's own kernels, `_weight_int8pack_mm` and the tinygemm CPU int4 kernel, for decode only and with
  bf16 activations: measured on the 2-core dev box (4096 x 1024 weight), one row takes 0.18 ms (int8) and
  0.14 ms (int4) in bf16 against 0.43 ms for a dense bf16 and 1.29 ms for a dense fp32 product, but 2.4 and
  4.1 ms with fp32 activations; at 256 rows they take 16 ms in bf16 and ~900 ms in fp32. So longer inputs
  multiply by the dequantized weight in the model's dtype.

The CUDA paths are registered as custom ops (`pixdesk::int8_linear`, `pixdesk::int4_linear`), so the
compiled decode step treats them as opaque calls and captures them in its CUDA graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DECODE_ROWS = 16  # at most this many rows take the GEMV kernels
# tinygemm's copy (quant.INT4_DECODE = "tinygemm", off by default) serves one row only: the 161 linears of a
# 12B model on an H200 (bench/kernels.py, session 6) take 3.56 ms there against 3.97 in int4_triton's one-row
# GEMV, but at 8 rows 9.06 ms against 4.42 in int4_triton's tensor-core kernel.
TINYGEMM_ROWS = 1
# One bf16 row with groups of 128 takes the tensor-core GEMV (int4_mma.py): the 161 linears in 2.92 ms on an
# H200 against 3.56 (tinygemm) and 3.95 (int4_triton's one-row kernel), session 9; 2.45 ms on group-major
# buffers, session 10.
INT4_MMA = True
# The one-row int4 q|k|v and gate|up GEMVs with the RoPE + cache write, and the SiLU x up, in their epilogue
# (int4_fused.py): one kernel a layer less each. Off: the mma GEMV, then rope_cache_write / silu_mul.py.
# Measured on an H200 (session 12, bench/fused_chain.py: us a call in a 40-layer graph chain): q|k|v 7.18 +
# 2.28 for rope_cache_write against 8.56 fused (engine b1 311.7 -> 315.4 tok/s); gate|up 24.97 + 1.21 for
# silu_mul against 29.35 fused (32.2 unsplit): the gated form loses, so it stays off.
FUSED_ROPE = True
FUSED_GATED = False
# The one-row int4 GEMV's K-split partials summed in its own last program of each row block (int4_fused.
# reduced): one bf16 row for the next kernel (the add + RMSNorm after wo and down is one program a row, and
# reading 8 fp32 rows was most of its time) instead of S fp32 rows. H200, session 12 (`--stage ab`): engine
# b1 316.8 -> 324.3 tok/s, step replay 3.074 -> 3.004 ms, same greedy ids; 334.1 with down at 16 splits.
REDUCE_IN_GEMV = True
# (Not for gate|up: its partials summed in-kernel ahead of silu_mul.py measured slower, H200 session 13:
# 333.7 -> 327.9 tok/s; bench/NOTES.md.)
# 2..8 bf16 rows with groups of 128 through the tensor-core GEMV with one mma column a row
# (int4_mma_rows.py) instead of int4_triton's 2..16-row kernel. H200, session 13 (`--stage int4`): b8
# 1151 -> 1335 tok/s (b8/b1 against the bytes model's ideal 0.746 -> 0.87), b1 unchanged.
INT4_MMA_ROWS = True
CPU_INT4_GROUPS = (32, 64, 128, 256)  # what torch's CPU int4 kernel accepts
TINYGEMM_GROUPS = (32, 64, 128, 256)  # and its CUDA kernel


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def _kernels():
    """Our Triton kernels (int8, int4 and the one-row int4 mma modules), or None where Triton is missing (CUDA
    builds of torch on Windows): then the quantized products fall back to dequantizing with plain torch ops
    (correct, slower)."""
    try:
        from pixdesk.model import int4_mma, int4_triton, quant_triton
    except ImportError:
        return None
    return quant_triton, int4_triton, int4_mma


def pack_int4(q: torch.Tensor, group: int) -> torch.Tensor:
    """Values 0..15 (N, K) -> uint8 (N, K/2) in the interleaved int4 layout (quant.py's docstring draws it).

    A group of G weights is G/8 little-endian int32 words; nibble i (bits 4i..4i+3) of word w holds
    k = i * G/8 + w. So nibble i of a group's consecutive words multiplies consecutive inputs, which the
    decode kernels read as one vector load.
    """
    N, K = q.shape
    words = group // 8
    q = q.to(torch.uint8).reshape(N, K // group, 8, words).transpose(2, 3)  # (N, groups, word, nibble)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).reshape(N, K // 2)


def group_of(qweight: torch.Tensor, scales: torch.Tensor) -> int:
    """The group size of an int4 weight from its buffers' shapes."""
    return qweight[0].numel() * 2 // scales.shape[1]


def unpack_int4(packed: torch.Tensor, group: int) -> torch.Tensor:
    """uint8 (N, K/2) or (N, K/G, G/2) in the interleaved layout, any strides -> uint8 (N, K) with values
    0..15 in k order."""
    N, K = packed.shape[0], packed[0].numel() * 2
    b = packed.reshape(N, K // group, group // 8, 4)  # (N, groups, word, byte)
    q = torch.stack([b & 0xF, b >> 4], dim=-1).reshape(N, K // group, group // 8, 8)  # nibble i = 2*byte + hi
    return q.transpose(2, 3).reshape(N, K)


def group_major(qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor):
    """int4 buffers -> the same values, stored group by group: qweight (N, K/G, G/2) whose memory is
    (K/G, N, G/2), scales and minimums (N, K/G) stored as (K/G, N). One group of consecutive rows is then one
    contiguous block (8 KB for 128 rows at G = 128) and their scales one contiguous vector, so a GEMV
    program's loads for a group are coalesced; row-major, each row's 64 bytes of a group sit K/2 bytes from
    the next row's and each scale in a sector of its own. No copy where the buffers are already so."""
    N, NG = scales.shape
    q = qweight.reshape(N, NG, -1).transpose(0, 1).contiguous().transpose(0, 1)
    return q, scales.t().contiguous().t(), mins.t().contiguous().t()


def interleaved_scales(scales: torch.Tensor, mins: torch.Tensor) -> bool:
    """Are scales and minimums the two halves of one bf16x2 word a (row, group), as
    Int4Linear.interleave_scales makes them: the scale 4-byte aligned, the minimum 2 bytes after it, both
    with the same strides?"""
    return (
        scales.dim() == 2 and scales.stride() == mins.stride() and scales.stride(0) == 2
        and scales.data_ptr() % 4 == 0 and mins.data_ptr() == scales.data_ptr() + 2
    )  # fmt: skip


def is_group_major(qweight: torch.Tensor, scales: torch.Tensor) -> bool:
    """Are the buffers laid out as group_major makes them?"""
    return qweight.dim() == 3 and qweight.transpose(0, 1).is_contiguous() and scales.t().is_contiguous()


def dequantize_int4(qweight, scales, mins, group: int, dtype: torch.dtype) -> torch.Tensor:
    """Canonical int4 -> (N, K) in `dtype` with torch ops (the reference the kernels are checked against)."""
    q = unpack_int4(qweight, group).float()  # (N, K)
    N, K = q.shape
    w = q.reshape(N, K // group, group) * scales.float()[..., None] + mins.float()[..., None]
    return w.reshape(N, K).to(dtype)


# ------------------------------------------------------------------------------------------ int8


@torch.library.custom_op("pixdesk::int8_linear", mutates_args=())
def int8_linear_op(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """-> partials (S, M, N) whose sum over S is the product (one-row decode splits K, else S = 1)."""
    kernels = _kernels()
    if x.shape[0] <= DECODE_ROWS and kernels is not None:
        return kernels[0].int8_gemv(x, qweight, scales)
    out = F.linear(x, qweight.to(x.dtype))  # (M, N): scale per output channel applies after the product
    return (out.float() * scales).to(x.dtype).unsqueeze(0)


@int8_linear_op.register_fake
def _(x, qweight, scales):
    kernels, (M, K), N = _kernels(), x.shape, qweight.shape[0]
    if kernels is None or M > DECODE_ROWS:
        return x.new_empty(1, M, N)
    S = kernels[0].int8_splits(N, K, M, x.device)
    return x.new_empty(S, M, N, dtype=kernels[0].partials_dtype(S, x.dtype))


@torch.library.custom_op("pixdesk::int8_gated", mutates_args=())
def int8_gated_op(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x (1, K) through an int8 gate|up weight (N, K) -> silu(gate) * up (1, N / 2): one kernel, or where the
    one-row GEMV would split K (small models) or Triton is missing, the product, then SiLU and the product."""
    kernels, (N, K) = _kernels(), qweight.shape
    if kernels is not None and kernels[0].int8_splits(N, K, 1, x.device) == 1:
        return kernels[0].int8_gated(x, qweight, scales)
    gate, up = sum_partials(int8_linear_op(x, qweight, scales), x.dtype).chunk(2, dim=-1)
    return F.silu(gate) * up


@int8_gated_op.register_fake
def _(x, qweight, scales):
    return x.new_empty(1, qweight.shape[0] // 2)


def int8_gated(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor | None:
    """One CUDA row through an int8 gate|up weight -> silu(gate) * up (int8_gated_op), else None. Only
    tensor properties decide here: this runs inside the compiled decode step."""
    if not x.is_cuda or x.numel() != qweight.shape[1]:
        return None
    return int8_gated_op(x.reshape(1, -1).contiguous(), qweight, scales)


def silu_gate_up(gate_up, x: torch.Tensor) -> torch.Tensor:
    """x (M, K) through a fused gate|up linear -> silu(gate) * up (M, N / 2): one kernel where the module
    has one for x (`gated`: one row on CUDA), else the linear, then SiLU and the product."""
    gated = getattr(gate_up, "gated", None)
    out = gated(x) if gated is not None else None
    if out is not None:
        return out
    gate, up = gate_up(x).chunk(2, dim=-1)
    return F.silu(gate) * up


def sum_partials(parts: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(S, M, N) K-split partials -> (M, N); the compiled decode step fuses the sum into the next kernel."""
    return parts[0] if parts.shape[0] == 1 else parts.sum(0).to(dtype)


def linear_partials(linear, x: torch.Tensor) -> torch.Tensor:
    """x (M, K) through any of the model's linears -> (S, M, N) whose sum over S is linear(x): the K-split
    partials of the decode kernels where the module has them (`partials`), else its output as one."""
    partials = getattr(linear, "partials", None)
    return partials(x) if partials is not None else linear(x)[None]


def int8_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x (..., K) @ (q * s).T -> (..., N) in x's dtype."""
    x2 = _rows(x).contiguous()
    if x.device.type == "cuda":
        out = sum_partials(int8_linear_op(x2, qweight, scales), x.dtype)
    elif x2.shape[0] <= DECODE_ROWS:  # torch's CPU kernel is fast with bf16 activations only (see below)
        out = torch._weight_int8pack_mm(x2.to(torch.bfloat16), qweight, scales.to(torch.bfloat16)).to(x.dtype)
    else:
        out = F.linear(x2, qweight.to(x.dtype)) * scales.to(x.dtype)
    return out.reshape(*x.shape[:-1], qweight.shape[0])


# ------------------------------------------------------------------------------------------ int4


@torch.library.custom_op("pixdesk::int4_linear", mutates_args=())
def _int4_linear_op(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, group: int
) -> torch.Tensor:
    """-> partials (S, M, N) whose sum over S is the product (the decode GEMV splits K, else S = 1)."""
    kernels = _kernels()
    if kernels is None:
        return F.linear(x, dequantize_int4(qweight, scales, mins, group, x.dtype)).unsqueeze(0)
    mma = kernels[2]
    if INT4_MMA and mma.supported(x, group) and REDUCE_IN_GEMV:  # one part, as the shape function says
        if mma.aligned(scales, mins):
            from pixdesk.model import int4_fused

            return int4_fused.reduced(x, qweight, scales, mins)
        return sum_partials(kernels[1].int4_gemv(x, qweight, scales, mins, group), x.dtype)[None]
    if INT4_MMA and mma.supported(x, group) and mma.aligned(scales, mins):
        return mma.int4_gemv_mma(x, qweight, scales, mins)
    if INT4_MMA_ROWS and mma.aligned(scales, mins):
        from pixdesk.model import int4_mma_rows

        if int4_mma_rows.supported(x, group):
            return int4_mma_rows.int4_gemv_rows_mma(x, qweight, scales, mins)
    if x.shape[0] <= DECODE_ROWS:
        return kernels[1].int4_gemv(x, qweight, scales, mins, group)
    w = kernels[1].int4_dequantize(qweight, scales, mins, group, x.dtype)  # (N, K) temporary
    return F.linear(x, w).unsqueeze(0)


@_int4_linear_op.register_fake
def _(x, qweight, scales, mins, group):
    kernels, (M, K), N = _kernels(), x.shape, qweight.shape[0]
    if kernels is None or M > DECODE_ROWS:
        return x.new_empty(1, M, N)
    if REDUCE_IN_GEMV and INT4_MMA and kernels[2].supported(x, group):
        return x.new_empty(1, M, N)
    S = kernels[1].splits(N, K, group, M, x.device)
    return x.new_empty(S, M, N, dtype=kernels[0].partials_dtype(S, x.dtype))


def int4_linear_partials(x, qweight, scales, mins, group: int) -> torch.Tensor:
    """x (M, K) contiguous on CUDA -> (S, M, N) K-split partials whose sum is the product."""
    return _int4_linear_op(x, qweight, scales, mins, group)


def int4_linear(x, qweight, scales, mins, group: int) -> torch.Tensor:
    """x (..., K) on CUDA @ dequantized (N, K).T -> (..., N). The K-split partials are summed here, where
    the compiled decode step fuses the sum into the next kernel."""
    out = sum_partials(_int4_linear_op(_rows(x).contiguous(), qweight, scales, mins, group), x.dtype)
    return out.reshape(*x.shape[:-1], qweight.shape[0])


@torch.library.custom_op("pixdesk::int4_gated", mutates_args=())
def int4_gated_op(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, group: int
) -> torch.Tensor:
    """x (1, K) through an int4 gate|up weight (N, K) -> silu(gate) * up (1, N / 2): the one-row mma GEMV
    with SiLU x up in its epilogue (int4_fused.gated; FUSED_GATED off: its partials, then silu_mul.py);
    elsewhere the linear, then SiLU and the product in torch."""
    kernels = _kernels()
    mma = kernels[2] if kernels is not None and INT4_MMA else None
    if mma is not None and x.is_cuda and mma.supported(x, group) and mma.aligned(scales, mins):
        if FUSED_GATED:
            from pixdesk.model import int4_fused

            return int4_fused.gated(x, qweight, scales, mins)
        from pixdesk.model.silu_mul import silu_mul_partials

        return silu_mul_partials(mma.int4_gemv_mma(x, qweight, scales, mins), x.dtype)
    if x.is_cuda:
        gate, up = sum_partials(_int4_linear_op(x, qweight, scales, mins, group), x.dtype).chunk(2, dim=-1)
    else:
        gate, up = F.linear(x, dequantize_int4(qweight, scales, mins, group, x.dtype)).chunk(2, dim=-1)
    return F.silu(gate) * up


@int4_gated_op.register_fake
def _(x, qweight, scales, mins, group):
    return x.new_empty(1, qweight.shape[0] // 2)


def int4_gated(x: torch.Tensor, qweight, scales, mins, group: int) -> torch.Tensor | None:
    """One bf16 CUDA row through an int4 gate|up weight -> silu(gate) * up (int4_gated_op), else None. Only
    tensor properties decide here: this runs inside the compiled decode step."""
    if not x.is_cuda or x.numel() != scales.shape[1] * group or x.dtype != torch.bfloat16:
        return None
    return int4_gated_op(x.reshape(1, -1).contiguous(), qweight, scales, mins, group)


@torch.library.custom_op("pixdesk::int4_qkv_rope", mutates_args=("keys", "values"))
def int4_qkv_rope_op(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    mins: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    positions: torch.Tensor,
    n_heads: int,
) -> torch.Tensor:
    """x (1, K) bf16 through an int4 q|k|v weight, q and k rotated, k and v written to the cache's slot 0 at
    positions[0]: one kernel (int4_fused.qkv_rope), or where the scales are not 4-byte aligned (the mma
    GEMV reads them as words) the GEMV's partials, then rope_cache_write. Returns q (1, H, D)."""
    from pixdesk.model import int4_fused, int4_mma

    if int4_mma.aligned(scales, mins):
        return int4_fused.qkv_rope(x, qweight, scales, mins, cos, sin, keys, values, positions, n_heads)
    parts = _int4_linear_op(x, qweight, scales, mins, group_of(qweight, scales))
    return torch.ops.pixdesk.rope_cache_write(parts, cos, sin, keys, values, positions, n_heads)


@int4_qkv_rope_op.register_fake
def _(x, qweight, scales, mins, cos, sin, keys, values, positions, n_heads):
    return keys.new_empty(1, n_heads, keys.shape[3])


def int4_qkv_rope(x, qweight, scales, mins, group: int, cos, sin, keys, values, positions, n_heads: int):
    """The decode step's q|k|v projection, RoPE and cache write as one kernel (int4_qkv_rope_op) where it
    applies: FUSED_ROPE on, one bf16 CUDA row, the mma GEMV's group size and heads of its block size (128)
    into a cache of one slot; else None. Only tensor properties decide (no data pointers): this runs in
    the compiled step."""
    kernels = _kernels()
    if not (FUSED_ROPE and INT4_MMA and kernels is not None and x.is_cuda and x.dtype == torch.bfloat16):
        return None
    mma = kernels[2]
    if x.numel() != scales.shape[1] * group or keys.shape[0] != 1 or keys.shape[3] != mma.BLOCK_N:
        return None
    if not mma.supported(x.reshape(1, -1), group):
        return None
    return int4_qkv_rope_op(x.reshape(1, -1).contiguous(), qweight, scales, mins, cos, sin, keys, values,
                            positions, n_heads)  # fmt: skip


def int4_cpu_pack(
    qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical int4 -> the tinygemm CPU layout: (packed weight, scale|zero (K/G, N, 2) in `dtype`).

    tinygemm reads w = (q - 8) * scale + zero, so zero = min + 8 * scale.
    """
    q = unpack_int4(qweight, group_of(qweight, scales)).to(torch.int32)  # (N, K)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    s, m = scales.float(), mins.float()
    sz = torch.stack([s, m + 8 * s], dim=-1).transpose(0, 1).contiguous().to(dtype)  # (K/G, N, 2)
    return packed, sz


def int4_linear_cpu(x, packed, sz, group: int, out_features: int) -> torch.Tensor:
    out = torch.ops.aten._weight_int4pack_mm_for_cpu(_rows(x).contiguous(), packed, group, sz)
    return out.reshape(*x.shape[:-1], out_features)


def tinygemm_fits(m) -> bool:
    """tinygemm's CUDA kernel: groups of 32..256, K a multiple of 128 (8 inner k-tiles), N of 8."""
    return m.group_size in TINYGEMM_GROUPS and m.in_features % 128 == 0 and m.out_features % 8 == 0


def int4_cuda_pack(qweight, scales, mins) -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical int4 -> tinygemm's CUDA layout: (int32 tiles, scale|zero (K/G, N, 2) bf16).

    tinygemm wants bytes in k order with the even k in the high nibble, and w = (q - 8) * s + zero.
    """
    q = unpack_int4(qweight, group_of(qweight, scales))
    swapped = (q[:, 0::2] << 4) | q[:, 1::2]
    packed = torch.ops.aten._convert_weight_to_int4pack(swapped.contiguous(), 8)
    s, m = scales.float(), mins.float()
    sz = torch.stack([s, m + 8 * s], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
    return packed, sz


def int4_linear_tinygemm(x, packed, sz, group: int, out_features: int) -> torch.Tensor:
    out = torch.ops.aten._weight_int4pack_mm(_rows(x).to(torch.bfloat16).contiguous(), packed, group, sz)
    return out.to(x.dtype).reshape(*x.shape[:-1], out_features)
