"""Pulling the next GEMV's weights into L2 from inside a latency-bound kernel (CUDA).

At one row the decode step alternates bandwidth-bound GEMVs with kernels that leave DRAM half idle: the split
decode attention reads a layer's keys and values at ~2.1 TB/s of the ~4.2 an H200 reads (its programs wait on
one block of loads each; session 13's profile: 8.5 us a layer for 17.8 MB). The output projection after it
reads its weights from DRAM again, at ~1.9 TB/s (int4 wo: 11 MB in 5.9 us, latency- more than
bandwidth-bound). So the attention programs, before anything else, issue `prefetch.global.L2` for a share of
wo's bytes each: the reads land in L2 (50 MB on an H100/H200) while attention runs, and wo then reads from L2.
A prefetch returns nothing and writes nothing, so a share's clamped tail naming a sector twice costs nothing,
and the weights are written by no kernel of the step (a prefetch may run before the PDL wait).

A kernel takes up to `SLOTS` byte ranges as (pointer, bytes) argument pairs (`kernel_args` names them) and
calls `prefetch_share` with its program index and count; `targets` names what a linear's one-row GEMV reads.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pixdesk.model.quant_triton import _INTERPRET

ENABLED = True  # bench/gpu_ab.py's `no_prefetch` turns it off
SLOTS = 3  # byte ranges a kernel can take: an int4 linear's words, scales and minimums
SECTOR: tl.constexpr = tl.constexpr(32)  # bytes: L2 fills 32-byte sectors, so one prefetch a sector
BLOCK: tl.constexpr = tl.constexpr(128)  # sectors a program issues per loop step (one a thread at four warps)


def targets(linear) -> list[torch.Tensor]:
    """The tensors `linear`'s one-row decode GEMV reads, where the step prefetches them: an int4 linear's
    three buffers on the Triton path (no tinygemm copy); none for other linears (a bf16 wo is 42 MB, most of
    L2, and an int8 one not measured)."""
    from pixdesk.model.quant import Int4Linear

    if not ENABLED or _INTERPRET or not isinstance(linear, Int4Linear) or linear.cuda_pack is not None:
        return []
    if not linear.qweight.is_cuda:
        return []
    return [linear.qweight, linear.scales, linear.mins]


def span_bytes(t: torch.Tensor) -> int:
    """Bytes from t's first element to past its last, for any view with non-negative strides (a permuted
    dense tensor spans exactly its numel)."""
    if t.numel() == 0:
        return 0
    return (1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))) * t.element_size()


def kernel_args(tensors: list[torch.Tensor], placeholder: torch.Tensor) -> dict:
    """A kernel's prefetch arguments by name: `SLOTS` (pointer, bytes) pairs `pf0`, `pf0_bytes`, ..., unused
    ones the placeholder with zero bytes, and N_PREFETCH, how many are used."""
    if len(tensors) > SLOTS:
        raise ValueError(f"at most {SLOTS} prefetch ranges, got {len(tensors)}")
    args: dict = {"N_PREFETCH": len(tensors)}
    for i in range(SLOTS):
        used = i < len(tensors)
        args[f"pf{i}"] = tensors[i] if used else placeholder
        args[f"pf{i}_bytes"] = span_bytes(tensors[i]) if used else 0
    return args


@triton.jit
def _prefetch_range(base, n_bytes, program, n_programs):
    """This program's share of the sectors of [base, base + n_bytes) into L2."""
    sectors = tl.cdiv(n_bytes, SECTOR)
    per = tl.cdiv(sectors, n_programs)
    lo = program * per
    hi = tl.minimum(lo + per, sectors)
    byte_base = base.to(tl.pointer_type(tl.int8))
    for i in range(lo, hi, BLOCK):
        sector = tl.minimum(i + tl.arange(0, BLOCK), hi - 1).to(tl.int64)
        tl.inline_asm_elementwise(
            "prefetch.global.L2 [$1]; // $0", "=r,l", [byte_base + sector * SECTOR], dtype=tl.int32,
            is_pure=False, pack=1,
        )  # fmt: skip


@triton.jit
def prefetch_share(program, n_programs, p0, n0, p1, n1, p2, n2, N_PREFETCH: tl.constexpr):
    """Program `program` of `n_programs`: its share of each of the first N_PREFETCH ranges into L2."""
    if N_PREFETCH > 0:
        _prefetch_range(p0, n0, program, n_programs)
    if N_PREFETCH > 1:
        _prefetch_range(p1, n1, program, n_programs)
    if N_PREFETCH > 2:
        _prefetch_range(p2, n2, program, n_programs)
