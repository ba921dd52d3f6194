"""Each config of the one-row int4 mma GEMV (model/int4_mma.py) on each decoder shape of Pixtral-12B, timed
alone (triton.testing.do_bench, L2 flushed between runs): us and GB/s of int4 bytes, best marked.

    PYTHONPATH=. python3 bench/int4_configs.py      # prints a table, writes $OUT/int4_configs.json
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import triton

from pixdesk.model import int4_mma
from pixdesk.model.quant import Int4Linear, dequantize

SHAPES = [(6144, 5120), (5120, 4096), (28672, 5120), (5120, 14336), (131072, 5120)]


def main() -> None:
    kernel = int4_mma._gemv1_mma
    configs = list(kernel.configs)
    res = {}
    print("| shape | " + " | ".join(f"w{c.num_warps} p{int(c.kwargs['PREFETCH'])} s{c.kwargs['STAGES']}"
                                     for c in configs) + " |")  # fmt: skip
    for n, k in SHAPES:
        lin = Int4Linear.from_float(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * k**-0.5)
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        nbytes = sum(b.numel() * b.element_size() for b in lin.buffers())
        ref = x.float() @ dequantize(lin).float().T
        row = []
        for c in configs:
            kernel.configs, kernel.cache = [c], {}
            fn = lambda x=x, lin=lin: int4_mma.int4_gemv_mma(x, lin.qweight, lin.scales, lin.mins)  # noqa: E731
            err = float((fn().float().sum(0) - ref).abs().max() / ref.abs().max())
            us = triton.testing.do_bench(fn, warmup=10, rep=50) * 1e3
            row.append(us if err < 4e-3 else float("inf"))  # a wrong config never wins
            res[f"{n}x{k} {c}"] = {"us": us, "GBps": nbytes / us / 1e3, "rel_err": err}
        best = min(row)
        cells = [f"**{us:.1f}**" if us == best else f"{us:.1f}" for us in row]  # inf: wrong result
        print(f"| {n}x{k} ({nbytes / best / 1e3:.0f} GB/s) | " + " | ".join(cells) + " |", flush=True)
    kernel.configs, kernel.cache = configs, {}
    out = Path(os.environ.get("OUT", "bench-out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "int4_configs.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
