"""The read ceiling of one kernel per linear: a plain streaming read (each program sums BLOCK contiguous int32
and writes one value) of the int4 decoder's weight sizes, 40 distinct buffers one after another in a CUDA
graph with programmatic dependent launch, as the decode step runs its GEMVs. No GEMV that reads its weight
once in one kernel can beat this on the same bytes; what is left between it and bytes / read bandwidth is
each kernel's ramp-up and tail.

    PYTHONPATH=. python3 bench/read_ceiling.py      # prints a table, writes $OUT/read_ceiling.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import graph_time  # noqa: E402

from bench.int4_chains import SHAPES  # noqa: E402
from pixdesk.model import pdl  # noqa: E402

CONFIGS = ((1024, 4), (2048, 4), (4096, 8), (8192, 8))  # (int32 a program, warps)


@triton.jit
def _stream(w_ptr, y_ptr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    pdl.wait(USE_PDL)
    pdl.release(USE_PDL)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + tl.program_id(0), tl.sum(tl.load(w_ptr + offs), axis=0))


def int4_bytes(n: int, k: int) -> int:
    """An int4 weight with group 128: the nibbles and a bf16 scale and minimum a group."""
    return n * k // 2 + n * (k // 128) * 4


def main() -> None:
    use_pdl = pdl.enabled(torch.device("cuda"))
    res = {}
    print(f"| linear | MB | {' | '.join(f'{b} x {w}w' for b, w in CONFIGS)} | bytes at 4.19 TB/s |")
    print("|---" * (len(CONFIGS) + 3) + "|")
    for name, (n, k) in SHAPES.items():
        count = 8 if name == "LM head" else 40
        words = int4_bytes(n, k) // 4
        row = []
        for block, warps in CONFIGS:
            words_b = words // block * block
            bufs = [torch.randint(0, 2**30, (words_b,), dtype=torch.int32, device="cuda") for _ in range(count)]
            out = torch.empty(words_b // block, dtype=torch.int32, device="cuda")
            grid = (words_b // block,)

            def chain(bufs=bufs, out=out, grid=grid, block=block, warps=warps):
                for b in bufs:
                    _stream[grid](b, out, BLOCK=block, USE_PDL=use_pdl, num_warps=warps, **pdl.launch(use_pdl))

            us = graph_time(chain) * 1e6 / count
            row.append((us, words_b * 4 / us / 1e6))
            del bufs
            torch.cuda.empty_cache()
        res[name] = row
        ideal = int4_bytes(n, k) / 4.19e6
        cells = " | ".join(f"{us:.2f} us ({tbps:.2f} TB/s)" for us, tbps in row)
        print(f"| {name} | {int4_bytes(n, k) / 1e6:.1f} | {cells} | {ideal:.2f} us |", flush=True)
    out_dir = Path(os.environ.get("OUT", "bench-out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "read_ceiling.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
