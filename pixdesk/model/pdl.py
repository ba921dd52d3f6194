"""Programmatic dependent launch (Hopper and later) for the decode step's Triton kernels.

A decode step at batch 1 is ~400 small kernels, and between two of them the GPU drains the first, then
launches and ramps up the second. A kernel launched with `launch_pdl` may start while the kernel before it
(its primary) still runs, as soon as every program of the primary has passed `release` (griddepcontrol.
launch_dependents). It must then `wait` (griddepcontrol.wait: the primary has completed and its writes are
visible) before it reads anything an earlier kernel wrote or writes anything at all. What a kernel does
before its wait must touch only memory no kernel of the step writes: the weights. So a GEMV can load its
first weights while the kernel before it finishes. (Prefetching a GEMV's first 4 or 8 group tiles into L2
with cp.async.bulk.prefetch before the wait measured slower on an H200: int4 step 3.14 -> 3.32 / 3.52 ms.)

Rules every kernel here keeps: it calls `wait` on every path, and `release` only after its own `wait` (so at
most one kernel runs ahead, and by transitivity a kernel past its wait sees every earlier kernel complete).
A kernel launched without the attribute (Inductor's) starts after its predecessor completes, as always, and
a PDL kernel after it simply starts when it ends.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from pixdesk.model.quant_triton import _INTERPRET

ENABLED = os.environ.get("PIXDESK_PDL", "1") != "0"  # off: every kernel launches plainly
MIN_CUDA = (12, 4)  # CUDA graphs capture programmatic dependencies from 12.3 on


@functools.cache
def _capable(index: int) -> bool:
    """Hopper or later, and a CUDA build of torch whose graphs keep the launch attribute."""
    built = tuple(int(p) for p in (torch.version.cuda or "0.0").split(".")[:2])
    return torch.cuda.get_device_capability(index)[0] >= 9 and built >= MIN_CUDA


def enabled(device: torch.device) -> bool:
    return ENABLED and not _INTERPRET and device.type == "cuda" and _capable(device.index or 0)


def launch(on: bool) -> dict:
    """The launch option that lets a kernel start under its predecessor."""
    return {"launch_pdl": True} if on else {}


@triton.jit
def wait(ON: tl.constexpr):
    if ON:
        tl.extra.cuda.gdc_wait()


@triton.jit
def release(ON: tl.constexpr):
    if ON:
        tl.extra.cuda.gdc_launch_dependents()
