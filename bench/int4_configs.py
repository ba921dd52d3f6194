"""Each config of the one-row int4 mma GEMV (model/int4_mma.py) on each decoder shape of Pixtral-12B, timed the
way the decode step runs it: 40 distinct weights of the shape (the LM head alone) one after another in a CUDA
graph, launched with PDL where the GPU has it. us a linear and GB/s of int4 bytes, best marked; each config is
checked against the dequantized product first (a wrong config never wins).

The autotuner picks among the same configs from lone launches (triton.testing.do_bench, L2 flushed): on the
small shapes the ~5-20 us of a lone launch's overhead swamps the differences, so its pick can change between
sittings. This table is the measurement to pin configs by.

    PYTHONPATH=. python3 bench/int4_configs.py      # prints a table, writes $OUT/int4_configs.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import graph_time  # noqa: E402

from pixdesk.model import int4_mma  # noqa: E402
from pixdesk.model.quant import Int4Linear, dequantize  # noqa: E402

SHAPES = [(6144, 5120), (5120, 4096), (28672, 5120), (5120, 14336), (131072, 5120)]


def label(c) -> str:
    return f"w{c.num_warps} p{int(c.kwargs['PREFETCH'])} s{c.kwargs['STAGES']}"


def chain(x, lins) -> list:
    return [int4_mma.int4_gemv_mma(x, m.qweight, m.scales, m.mins) for m in lins]


def main() -> None:
    kernel = int4_mma._gemv1_mma
    int4_mma.USE_PINNED = False  # every config through the autotuner's list, one at a time
    configs = list(kernel.configs)
    res = {}
    print("| shape | " + " | ".join(label(c) for c in configs) + " |")
    print("|---" * (len(configs) + 1) + "|")
    for n, k in SHAPES:
        count = 1 if n == 131072 else 40
        lins = [Int4Linear.from_float(torch.randn(n, k, device="cuda") * k**-0.5) for _ in range(count)]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        nbytes = sum(b.numel() * b.element_size() for lin in lins for b in lin.buffers())
        ref = x.float() @ dequantize(lins[0]).float().T
        row = []
        for c in configs:
            kernel.configs, kernel.cache = [c], {}
            err = float((int4_mma.int4_gemv_mma(x, lins[0].qweight, lins[0].scales, lins[0].mins).float().sum(0)
                         - ref).abs().max() / ref.abs().max())  # fmt: skip
            us = graph_time(lambda x=x, lins=lins: chain(x, lins)) * 1e6 / count
            row.append(us if err < 4e-3 else float("inf"))
            res[f"{n}x{k} {label(c)}"] = {"us": us, "GBps": nbytes / count / us / 1e3, "rel_err": err}
        best = min(row)
        res[f"{n}x{k} best"] = label(configs[row.index(best)])
        cells = [f"**{us:.1f}**" if us == best else f"{us:.1f}" for us in row]  # inf: wrong result
        print(f"| {n}x{k} ({nbytes / count / best / 1e3:.0f} GB/s) | " + " | ".join(cells) + " |", flush=True)
        lins.clear()
        torch.cuda.empty_cache()
    kernel.configs, kernel.cache = configs, {}
    out = Path(os.environ.get("OUT", "bench-out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "int4_configs.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
