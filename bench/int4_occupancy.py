"""The one-row int4 mma GEMV as served (interleaved scales; int4_fused.reduced for down, wo and the LM head),
per decoder shape of Pixtral-12B, under register caps (Triton's maxnreg: fewer registers, more programs an
SM), pipeline depths and K splits, timed as the decode step runs it (int4_chains: 40 distinct weights in a
CUDA graph). Each cell is checked against the served config's sums.

Why: the pipelined loop uses 74 registers (4 warps: 6 programs an SM, 792 on an H200), and gate|up has 896
programs at 4 splits, the LM head 1,024 unsplit: 1.13 and 1.29 waves. At 72 registers 7 programs fit, at 64
eight (bench/sass.py compiles them on the CPU: a few spills each).

    PYTHONPATH=. python3 bench/int4_occupancy.py     # prints a table, writes $OUT/int4_occupancy.json
"""

from __future__ import annotations

import torch

from bench.int4_chains import SHAPES, checked_us, print_row, save, weights
from pixdesk.model import int4_fused, int4_mma, int4_triton

# name -> the served call, the K splits to try (the served one first), the (warps, prefetch, stages) to try
PLANS = {
    "gate|up": (int4_mma.int4_gemv_mma, (4, 3, 5), ((4, False, 3), (4, False, 4))),
    "down": (int4_fused.reduced, (16, 14), ((4, False, 3), (4, False, 4))),
    "LM head": (int4_fused.reduced, (1, 2), ((4, False, 3), (4, False, 4))),
    "q|k|v": (int4_mma.int4_gemv_mma, (8, 5), ((8, True, 1), (4, False, 3))),
    "wo": (int4_fused.reduced, (8, 16), ((8, True, 1), (4, False, 3))),
}
CAPS = (None, 72, 64, 56)


def _total(y: torch.Tensor) -> torch.Tensor:
    return y.float().sum(0).reshape(-1)


def main() -> None:
    res: dict = {}
    pinned, caps = dict(int4_mma.PINNED), dict(int4_mma.MAXNREG)
    print("| shape, splits, config | " + " | ".join(f"maxnreg {c or '-'}" for c in CAPS) + " |")
    print("|---" * (len(CAPS) + 1) + "|")
    for name, (call, split_choices, configs) in PLANS.items():
        n, k = SHAPES[name]
        lins, x = weights(n, k)
        for lin in lins:
            lin.interleave_scales()
        fn = lambda i, lins=lins, call=call, x=x: call(x, lins[i].qweight, lins[i].scales, lins[i].mins)  # noqa: E731
        ref = _total(fn(0))
        for split in split_choices:
            int4_triton.ONE_ROW_SPLITS[(n, k)] = split
            for config in configs:
                int4_mma.PINNED[(n, k)] = config
                row = {}
                for cap in CAPS:
                    int4_mma.MAXNREG.pop((n, k), None)
                    if cap:
                        int4_mma.MAXNREG[(n, k)] = cap
                    try:
                        row[f"r{cap or '-'}"] = checked_us(fn, len(lins), _total, ref, 2e-3)
                    except Exception as exc:  # noqa: BLE001  (a cap ptxas refuses: the cell says so)
                        row[f"r{cap or '-'}"] = f"failed ({type(exc).__name__})"
                w, p, st = config
                label = f"{name} s{split} w{w}{' prefetch' if p else ''} st{st}"
                res[label] = row
                print_row(label, row)
        int4_triton.ONE_ROW_SPLITS.pop((n, k), None)
        int4_mma.PINNED.clear()
        int4_mma.PINNED.update(pinned)
        int4_mma.MAXNREG.clear()
        int4_mma.MAXNREG.update(caps)
        del lins
        torch.cuda.empty_cache()
    save(res, "int4_occupancy.json")


if __name__ == "__main__":
    main()
