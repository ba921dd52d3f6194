"""The one-row int4 mma GEMV (model/int4_mma.py) at several K splits per decoder shape of Pixtral-12B, each at
the three loop forms' best configs, timed as the decode step runs them: 40 distinct weights one after another
in a CUDA graph (PDL where the GPU has it). us a linear, best marked. More splits put more programs (more
bytes in flight) on the SMs, but leave more fp32 partials for the next kernel to sum (the add + RMSNorm after
wo and down is one program a row: its load grows with the splits; the engine a/b stage measures that).

    PYTHONPATH=. python3 bench/int4_splits.py     # prints a table, writes $OUT/int4_splits.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import graph_time  # noqa: E402

from pixdesk.model import int4_mma, int4_triton  # noqa: E402
from pixdesk.model.quant import Int4Linear  # noqa: E402

SPLITS = {  # the 12B decoder's shapes (40 layers) and the splits to try (their k_splits choice included)
    (6144, 5120): (4, 5, 8, 10),
    (5120, 4096): (4, 8, 16),
    (28672, 5120): (2, 4, 8),
    (5120, 14336): (4, 7, 8, 14, 16),
}
CONFIGS = ((8, True, 1), (4, True, 1), (4, False, 3))  # (warps, register prefetch, stages)


def chain(x, lins) -> list:
    return [int4_mma.int4_gemv_mma(x, m.qweight, m.scales, m.mins) for m in lins]


def main() -> None:
    res = {}
    pinned = dict(int4_mma.PINNED)
    print("| shape | splits | " + " | ".join(f"w{w} p{int(p)} s{s}" for w, p, s in CONFIGS) + " |")
    print("|---" * (len(CONFIGS) + 2) + "|")
    for (n, k), choices in SPLITS.items():
        lins = [Int4Linear.from_float(torch.randn(n, k, device="cuda") * k**-0.5) for _ in range(40)]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        for split in choices:
            int4_triton.ONE_ROW_SPLITS[(n, k)] = split
            row = []
            for config in CONFIGS:
                int4_mma.PINNED[(n, k)] = config
                us = graph_time(lambda x=x, lins=lins: chain(x, lins))
                row.append(us * 1e6 / len(lins))
                res[f"{n}x{k} s{split} {config}"] = row[-1]
            best = min(row)
            cells = [f"**{us:.1f}**" if us == best else f"{us:.1f}" for us in row]
            print(f"| {n}x{k} | {split} | " + " | ".join(cells) + " |", flush=True)
        int4_triton.ONE_ROW_SPLITS.pop((n, k))
        lins.clear()
        torch.cuda.empty_cache()
    int4_mma.PINNED.update(pinned)
    out = Path(os.environ.get("OUT", "bench-out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "int4_splits.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
