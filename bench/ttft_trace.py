"""Where a cold request's time to first token goes in the engine (bf16 by default): one new 1024x1024 image
prompt (4,183 tokens) under the profiler with host activity, laid out on one timeline from the submit call to
the first token's arrival: when the device starts, how busy it is, its idle stretches (with the host calls in
progress when each ended), the tail from the last device operation to the token, and device time by kernel.

    PYTHONPATH=. python3 bench/ttft_trace.py [--quant int4|int8|none] [--trace DIR]

`--trace DIR` also writes the Chrome trace (ttft-trace.json) for a closer look. The profiler slows the host
side (~13 ms of a 172 ms TTFT here), so a second view runs without it: host clocks and CUDA events at the
entry and exit of each stage of the prefill path (admission, vision encoder, adapter, embedding, chunks).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch

from bench.engine_gaps import host_calls_at
from bench.gpu import QUESTION, engine_for, timed_run
from bench.gpu_busy import idle_gaps, interval_union
from bench.gpu_model import DEVICE, image_prompt, served_checkpoint

GAP_US = 50.0


def profiled_cold_request(eng, seed: int):
    """The profiler over one max_tokens=1 request, with markers at the submit call and the first token."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from pixdesk.engine.events import Delta, Finish
    from pixdesk.engine.sampling import SamplingParams

    prompt = image_prompt(seed, QUESTION)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], **all_threads()) as prof:
        with record_function("bench.submit"):
            sub = eng.submit(prompt, SamplingParams(max_tokens=1, logit_bias={2: -100.0}))
        for ev in sub:
            if isinstance(ev, Delta):
                with record_function("bench.first_token"):
                    pass
            elif isinstance(ev, Finish) and ev.reason not in ("length", "stop"):
                raise RuntimeError(f"request failed: {ev}")
        if DEVICE == "cuda":
            torch.cuda.synchronize()
    return prof


STAGES = [  # (module, class or None, attribute, label)
    ("pixdesk.engine.prefiller", "Prefiller", "start", "admission"),
    ("pixdesk.model.pixtral", "Pixtral", "encode_images", "encode_images"),
    ("pixdesk.model.vision", "VisionEncoder", "forward", "vision encoder"),
    ("pixdesk.model.vision", "VisionLanguageAdapter", "forward", "adapter"),
    ("pixdesk.model.pixtral", "Pixtral", "embed", "embed"),
    ("pixdesk.engine.prefiller", "Prefiller", "chunk", "prefill chunk"),
]


def timeline_of_cold_request(eng, seed: int) -> None:
    """One unprofiled cold request with each stage's entry and exit stamped by the host clock and by a CUDA
    event: when the host got there, and when the device got there (the device's clock aligned at the first
    stamp, where it is idle)."""
    import importlib

    marks: list[tuple[str, float, object]] = []

    def stamp(label: str) -> None:
        ev = torch.cuda.Event(enable_timing=True) if DEVICE == "cuda" else None
        if ev is not None:
            ev.record()
        marks.append((label, time.perf_counter(), ev))

    def wrap(fn, label):
        def stamped(*a, **kw):
            stamp(f"{label} >")
            try:
                return fn(*a, **kw)
            finally:
                stamp(f"{label} <")
        return stamped

    saved = []
    for mod, cls, attr, label in STAGES:
        owner = getattr(importlib.import_module(mod), cls)
        saved.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, wrap(getattr(owner, attr), label))
    try:
        run = timed_run(eng, image_prompt(seed, QUESTION), 1)
    finally:
        for owner, attr, fn in saved:
            setattr(owner, attr, fn)
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    t0, first = run["t0"], marks[0]
    print(f"unprofiled timeline, TTFT {1e3 * (run['times'][0] - t0):.1f} ms (host ms since submit, device ms):")
    for label, t, ev in marks:
        dev = (first[1] - t0) * 1e3 + first[2].elapsed_time(ev) if ev is not None else float("nan")
        print(f"  {label:18s} host {1e3 * (t - t0):8.2f}  device {dev:8.2f}")
    print(f"  first token        host {1e3 * (run['times'][0] - t0):8.2f}")


def all_threads() -> dict:
    """The profiler option that records the engine thread's operators too (torch >= 2.10 or so), where known."""
    try:
        return {"experimental_config": torch._C._profiler._ExperimentalConfig(profile_all_threads=True)}
    except (AttributeError, TypeError):
        return {}


def marker(prof, name: str) -> float:
    return min(e.time_range.start for e in prof.events() if e.name == name)


def report(prof) -> None:
    t0, t1 = marker(prof, "bench.submit"), marker(prof, "bench.first_token")
    dev = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                 if str(e.device_type).endswith("CUDA") and t0 <= e.time_range.start <= t1)  # fmt: skip
    print(f"profiled TTFT {(t1 - t0) / 1e3:.2f} ms ({len(dev)} device operations)")
    if not dev:
        return
    first, last = dev[0], max(dev, key=lambda d: d[1])
    busy = interval_union([(a, b) for a, b, _ in dev])
    print(f"  submit -> first device op  {(first[0] - t0) / 1e3:7.2f} ms  ({first[2][:60]})")
    print(f"  device span                {(last[1] - first[0]) / 1e3:7.2f} ms, busy {busy / 1e3:.2f} ms "
          f"({busy / (last[1] - first[0]):.1%})")  # fmt: skip
    print(f"  last device op -> token    {(t1 - last[1]) / 1e3:7.2f} ms  ({last[2][:60]})")
    found = idle_gaps(dev, GAP_US)
    print(f"  {len(found)} idle stretches > {GAP_US:.0f} us, {sum(b - a for a, b, _, _ in found) / 1e3:.2f} ms:")
    for a, b, before, after in sorted(found, key=lambda g: g[0] - g[1])[:12]:
        print(f"    at +{(a - t0) / 1e3:7.2f} ms  {(b - a) / 1e3:6.2f} ms  {before[2][:40]} -> {after[2][:40]}")
    print("  host calls in progress when those stretches ended:")
    for name, n in host_calls_at(prof, [b for _, b, _, _ in found]).most_common(20):
        print(f"    {n:4d}  {name[:100]}")
    by_kernel: dict[str, float] = defaultdict(float)
    counts: Counter = Counter()
    for a, b, name in dev:
        by_kernel[name[:70]] += b - a
        counts[name[:70]] += 1
    print("  device time by operation (ms, calls):")
    for name, us in sorted(by_kernel.items(), key=lambda kv: -kv[1])[:25]:
        print(f"    {us / 1e3:8.2f}  {counts[name]:5d}  {name}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quant", choices=["none", "int8", "int4"], default="none")
    ap.add_argument("--scratch", default="/tmp/pixdesk-ttft")
    ap.add_argument("--trace", help="a folder for the Chrome trace")
    args = ap.parse_args()
    eng = engine_for(served_checkpoint(args.quant, Path(args.scratch)), 1, prefix_cache_bytes=2 * 2**30)  # as bench/gpu.py's TTFT engine
    t = time.perf_counter()
    timed_run(eng, image_prompt(10_000, QUESTION), 4)  # warm-up: cuBLAS/cuDNN, compiled regions, graphs
    timed_run(eng, image_prompt(10_001, QUESTION), 2)
    print(f"warm-up {time.perf_counter() - t:.1f} s", flush=True)
    cold = [timed_run(eng, image_prompt(seed, QUESTION), 1) for seed in (1, 2, 3)]
    print("unprofiled cold TTFT ms:", [round(1e3 * (r["times"][0] - r["t0"]), 1) for r in cold], flush=True)
    timeline_of_cold_request(eng, 5)
    prof = profiled_cold_request(eng, 4)
    eng.stop()
    report(prof)
    if args.trace:
        prof.export_chrome_trace(str(Path(args.trace) / "ttft-trace.json"))


if __name__ == "__main__":
    main()
