"""Where the engine's decode leaves the GPU idle: one b1 request (its image prefix cached, so ~all decode)
under the profiler with host activity; the idle gaps longer than GAP_US, counted by the device operations on
either side and by the host calls in progress when each gap ended (what the device was waiting for).

    PYTHONPATH=. python3 bench/engine_gaps.py [--quant int4|int8|none] [--gap-us US]

--gap-us 1 shows the short idle stretches between two decode steps (the step's copies, the graph launch);
each (before -> after) pair is listed with its count and total time. First, unprofiled: each replayed step's
device time inside the engine (CUDA events around `graph.replay()`) and the time from one step's start to
the next, against the same graph replayed back to back.
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch

from bench.gpu import QUESTION, engine_for, timed_run
from bench.gpu_busy import idle_gaps
from bench.gpu_clocks import ClockSampler
from bench.gpu_model import DEVICE, image_prompt, served_checkpoint

GAP_US = 20.0


def gaps(prof, gap_us: float = GAP_US) -> list[tuple[float, float, str, str]]:
    """(start, end, device op before, device op after) of each idle stretch longer than gap_us."""
    ops = [(e.time_range.start, e.time_range.end, e.name) for e in prof.events()
           if str(e.device_type).endswith("CUDA")]  # fmt: skip
    return [(a, b, before[2], after[2]) for a, b, before, after in idle_gaps(ops, gap_us)]


def host_calls_at(prof, moments: list[float]) -> Counter:
    """How often each host event was in progress at one of `moments` (us)."""
    host = [(e.time_range.start, e.time_range.end, e.name) for e in prof.events()
            if str(e.device_type).endswith("CPU")]  # fmt: skip
    return Counter(name for t in moments for a, b, name in host if a <= t <= b)


class TimedGraph:
    """A decode graph whose replays record CUDA events around themselves."""

    def __init__(self, graph):
        self.graph, self.marks = graph, []

    def replay(self) -> None:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        self.graph.replay()
        end.record()
        self.marks.append((start, end))


def step_times(eng, prompt, label: str = "cached prefix") -> None:
    """One request with every decode graph timed: the steps' device time in the engine, the period between
    their starts, and back-to-back replays of the same graph; then both per block of 16 steps (does the
    step slow down right after a long prefill?)."""
    import statistics

    decoder = eng.scheduler.decoder
    plain = dict(decoder.graphs)
    timed = {bucket: TimedGraph(graph) for bucket, (graph, _) in plain.items()}
    decoder.graphs.update({bucket: (timed[bucket], out) for bucket, (_, out) in plain.items()})
    try:
        with ClockSampler() as clocks:
            run = timed_run(eng, prompt, 129)
            torch.cuda.synchronize()
    finally:
        decoder.graphs.update(plain)
    marks = [m for t in timed.values() for m in t.marks]
    if len(marks) < 3:
        return
    first = marks[0][0]
    marks.sort(key=lambda m: first.elapsed_time(m[0]))
    inside = [s.elapsed_time(e) for s, e in marks]
    period = [a[0].elapsed_time(b[0]) for a, b in zip(marks, marks[1:])]
    graph = next(t.graph for t in timed.values() if t.marks)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(100):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    print(f"{label}: {len(marks)} steps: device time a step in the engine {statistics.median(inside):.3f} ms median "
          f"({min(inside):.3f} min, {statistics.mean(inside):.3f} mean), start to start "
          f"{statistics.median(period):.3f} ms median ({statistics.mean(period):.3f} mean); "
          f"back-to-back replays {start.elapsed_time(end) / 100:.3f} ms; "
          f"client {128 / (run['times'][-1] - run['times'][0]):.1f} tok/s", flush=True)  # fmt: skip
    blocks = range(0, len(period), 16)
    print("  per 16 steps, device ms: " + " ".join(f"{statistics.mean(inside[i:i + 16]):.3f}" for i in blocks))
    print("  per 16 steps, start to start ms: " + " ".join(f"{statistics.mean(period[i:i + 16]):.3f}" for i in blocks))
    print("  first 6 steps start to start ms: " + " ".join(f"{p:.3f}" for p in period[:6]), flush=True)
    if clocks.samples:
        t = run["times"]
        during = [clocks.mean_mhz(t[i], t[min(i + 16, len(t) - 1)]) for i in range(0, len(t) - 1, 16)]
        print(f"  SM MHz: prefill {clocks.mean_mhz(run['t0'], t[0]) or 0:.0f}; per 16 tokens "
              + " ".join(f"{m or 0:.0f}" for m in during)
              + f"; power-cap samples {sum(1 for s in clocks.samples if s[2] & 0x4)} of {len(clocks.samples)}",
              flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quant", choices=["none", "int8", "int4"], default="int4")
    ap.add_argument("--scratch", default="/tmp/pixdesk-gaps")
    ap.add_argument("--gap-us", type=float, default=GAP_US)
    args = ap.parse_args()
    from pathlib import Path

    eng = engine_for(served_checkpoint(args.quant, Path(args.scratch)), 1)
    prompt = image_prompt(21, QUESTION)
    for _ in range(2):
        run = timed_run(eng, prompt, 129)
    print(f"{args.quant} b1 unprofiled: {128 / (run['times'][-1] - run['times'][0]):.1f} tok/s", flush=True)
    if DEVICE == "cuda" and eng.scheduler.decoder is not None and eng.scheduler.decoder.graphs:
        step_times(eng, prompt)
        for seed in (40, 41):  # new images: the request's own 4,183-token prefill comes right before
            step_times(eng, image_prompt(seed, QUESTION), f"fresh image {seed}")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:  # fmt: skip
        run = timed_run(eng, prompt, 129)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
    eng.stop()
    print(f"profiled: {128 / (run['times'][-1] - run['times'][0]):.1f} tok/s", flush=True)
    found = gaps(prof, args.gap_us)
    total = sum(b - a for a, b, _, _ in found)
    print(f"{len(found)} gaps > {args.gap_us:g} us, {total / 1e3:.2f} ms in all ({total / max(len(found), 1):.1f} "
          f"us mean)")  # fmt: skip
    by_pair: dict = {}
    for a, b, before, after in found:
        n, us = by_pair.get((before[:50], after[:50]), (0, 0.0))
        by_pair[(before[:50], after[:50])] = (n + 1, us + b - a)
    for (before, after), (n, us) in sorted(by_pair.items(), key=lambda kv: -kv[1][1])[:12]:
        print(f"  {n:4d} {us / 1e3:7.2f} ms  {before}  ->  {after}")
    print("host calls in progress when the gaps ended:")
    for name, n in host_calls_at(prof, [b for _, b, _, _ in found]).most_common(25):
        print(f"  {n:4d}  {name[:100]}")


if __name__ == "__main__":
    main()
