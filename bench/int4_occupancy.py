"""The one-row int4 mma GEMV as served (interleaved scales; int4_fused.reduced for down, wo and the LM head),
per decoder shape of Pixtral-12B, under register caps (Triton's maxnreg: fewer registers, more programs an
SM), pipeline depths and K splits, timed as the decode step runs it (int4_chains: 40 distinct weights in a
CUDA graph). Each cell is checked against the served config's sums, captured once, and timed round-robin
with the shape's other cells (a lone chain's timing moved by ~1.5 us between neighbouring cells).

Why: the pipelined loop uses 74 registers (4 warps: 6 programs an SM, 792 on an H200), and gate|up had 896
programs at 4 splits, the LM head 1,024 unsplit: 1.13 and 1.29 waves. At 72 registers 7 programs fit, at 64
eight (bench/sass.py compiles them on the CPU: a few spills each). What it found (session 17): the caps that
spill lose, but the register count ptxas picks by itself can be the slow one (q|k|v's register loop: 60
registers, 8.8 us; allowed 72, 7.1 us); down and wo ran faster in the 4-warp register-prefetch loop (wo at
16 splits) and gate|up at 5 splits: now the pinned defaults (int4_mma.PINNED / MAXNREG,
int4_triton.PINNED_SPLITS).

    PYTHONPATH=. python3 bench/int4_occupancy.py     # prints a table, writes $OUT/int4_occupancy.json
"""

from __future__ import annotations

import itertools
import os
import statistics

import torch

from bench.int4_chains import SHAPES, save, weights
from bench.kernels import captured_graph, replay_seconds
from pixdesk.model import int4_fused, int4_mma, int4_triton

WIDE = ((4, False, 3), (8, False, 3), (4, True, 1), (8, True, 1))  # every (warps, prefetch, stages) form
# name -> the served call, the K splits and (warps, prefetch, stages) to try, the served ones first (Hopper)
PLANS = {
    "gate|up": (int4_mma.int4_gemv_mma, (5, 4, 3), ((4, False, 3), (4, False, 4))),
    "down": (int4_fused.reduced, (16, 14), ((4, True, 1), (4, False, 3), (4, False, 4))),
    "LM head": (int4_fused.reduced, (1, 2), ((4, False, 3), (4, False, 4))),
    "q|k|v": (int4_mma.int4_gemv_mma, (8, 5), ((8, True, 1), (4, False, 3))),
    "wo": (int4_fused.reduced, (16, 8), ((4, True, 1), (8, True, 1), (4, False, 3))),
    # every loop form (OCC_SHAPES=down_wide,...)
    "gate|up_wide": (int4_mma.int4_gemv_mma, (5, 6), WIDE),
    "down_wide": (int4_fused.reduced, (16, 28, 8), WIDE),
    "LM head_wide": (int4_fused.reduced, (1, 2), WIDE),
    "q|k|v_wide": (int4_mma.int4_gemv_mma, (8, 5, 10), WIDE),
    "wo_wide": (int4_fused.reduced, (8, 16), WIDE),
}
# register caps to try (OCC_CAPS=-,72,96; "-": none): 64 and 56 spill inside the loop, 10-40% slower
# (partial-2026-12-04-h200-s17); above the natural count ptxas may use more (q|k|v's register loop: 60 -> 72)
CAPS = tuple(None if c == "-" else int(c) for c in os.environ.get("OCC_CAPS", "-,72").split(","))
ONLY = os.environ.get("OCC_SHAPES")  # a comma-separated subset of PLANS' names
ROUNDS = 7  # every cell of a shape timed once a round, round-robin; the median is reported


def _total(y: torch.Tensor) -> torch.Tensor:
    return y.float().sum(0).reshape(-1)


def _set(n: int, k: int, split: int, config: tuple, cap: int | None) -> None:
    int4_triton.ONE_ROW_SPLITS[(n, k)] = split
    int4_mma.PINNED[(n, k)] = config
    int4_mma.MAXNREG.pop((n, k), None)
    if cap:
        int4_mma.MAXNREG[(n, k)] = cap


def _shape_cells(name: str) -> dict:
    """label -> median us a call (or why it has none) for every (splits, config, cap) of one shape."""
    call, split_choices, configs = PLANS[name]
    n, k = SHAPES[name.removesuffix("_wide")]
    lins, x = weights(n, k)
    for lin in lins:
        lin.interleave_scales()
    calls = lambda: [call(x, m.qweight, m.scales, m.mins) for m in lins]  # noqa: E731
    ref = _total(call(x, lins[0].qweight, lins[0].scales, lins[0].mins))
    graphs, res = {}, {}
    for split, (w, p, st), cap in itertools.product(split_choices, configs, CAPS):
        label = f"{name} s{split} w{w}{' prefetch' if p else ''} st{st} r{cap or '-'}"
        _set(n, k, split, (w, p, st), cap)
        try:
            y = _total(call(x, lins[0].qweight, lins[0].scales, lins[0].mins))
            err = ((y - ref).norm() / ref.norm()).item()
            if err > 2e-3:
                res[label] = f"wrong ({err:.2g})"
                continue
            graphs[label] = captured_graph(calls)
        except Exception as exc:  # noqa: BLE001  (a cap ptxas refuses: the cell says so)
            res[label] = f"failed ({type(exc).__name__})"
    times: dict = {label: [] for label in graphs}
    for _ in range(ROUNDS):
        for label, g in graphs.items():
            times[label].append(replay_seconds(g, 10) * 1e6 / len(lins))
    res.update({label: statistics.median(t) for label, t in times.items()})
    return res


def main() -> None:
    res: dict = {}
    pinned, caps = dict(int4_mma.PINNED), dict(int4_mma.MAXNREG)
    print("| shape, splits, config, register cap | us a call (median of rounds) |")
    print("|---|---|")
    for name in ONLY.split(",") if ONLY else PLANS:
        cells = _shape_cells(name)
        best = min((v for v in cells.values() if isinstance(v, float)), default=None)
        for label, us in cells.items():
            cell = us if not isinstance(us, float) else f"**{us:.2f}**" if us == best else f"{us:.2f}"
            print(f"| {label} | {cell} |", flush=True)
        res.update(cells)
        int4_triton.ONE_ROW_SPLITS.clear()
        int4_mma.PINNED.clear()
        int4_mma.PINNED.update(pinned)
        int4_mma.MAXNREG.clear()
        int4_mma.MAXNREG.update(caps)
        torch.cuda.empty_cache()
    save(res, "int4_occupancy.json")


if __name__ == "__main__":
    main()
