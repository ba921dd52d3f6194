"""Profile the static decode step of the full-size model at batch 1: graph replay time, step() with its host
work, and the kernels that take the time (grouped by name, and by name after the kernel before it, which
tells one GEMV kernel's linears apart: `_combine>_reduced` is wo, `_silu_mul>_reduced` the down projection).

    PYTHONPATH=. python3 bench/profile_decode.py [--quant int8|int4] [--slots N] [--no-pdl] [--combine-columns N]

--no-pdl: kernels launched plainly, so each kernel's time is its own (under PDL a kernel's time includes
its wait for the one before).
"""

import argparse
import time

import torch

from bench.gpu_model import PIXTRAL_12B, random_model
from pixdesk.engine import decode_attention
from pixdesk.engine.cache import KVCache
from pixdesk.engine.static import StaticDecoder
from pixdesk.model import pdl
from pixdesk.model.quant import QuantSpec, quantize_model

ap = argparse.ArgumentParser()
ap.add_argument("--quant", choices=["none", "int8", "int4"], default="none")
ap.add_argument("--slots", type=int, default=1)
ap.add_argument("--no-pdl", action="store_true")
ap.add_argument("--combine-columns", type=int, help="decode_attention.COMBINE_COLUMNS (0: the whole head)")
args = ap.parse_args()
pdl.ENABLED = not args.no_pdl
if args.combine_columns is not None:
    decode_attention.COMBINE_COLUMNS = args.combine_columns or None
m = random_model(PIXTRAL_12B, torch.bfloat16, "cuda")
if args.quant != "none":
    quantize_model(m, QuantSpec(args.quant))
    torch.cuda.empty_cache()
m.fuse_projections()
kv = KVCache.for_model(m, args.slots, 4352)
slots = torch.arange(args.slots)
tok = torch.full((args.slots,), 1500)


def pos(p):
    return torch.full((args.slots,), p)


def scheduler_like_ms(sd, bias: dict, steps: int = 100) -> float:
    """The engine's pipelined greedy decode without the engine (pipeline.launch_step as the scheduler calls
    it): each step launched from the previous step's picks on the device before those picks are read, with
    the greedy pick (and a logit bias) outside the graph. Against the replay time, what the step's own
    launch and pick cost."""
    from types import SimpleNamespace

    from pixdesk.engine.pipeline import launch_step
    from pixdesk.engine.sampling import SamplingParams

    seqs = [SimpleNamespace(slot=i, params=SamplingParams(max_tokens=10**6, logit_bias=bias), mask=None)
            for i in range(args.slots)]  # fmt: skip
    step = launch_step(m, kv, sd, seqs, tok, [4210] * args.slots)
    step.host_picks()
    launch = wait = 0.0
    t = time.perf_counter()
    for i in range(steps):
        nxt = launch_step(m, kv, sd, seqs, step.picks, [4211 + i] * args.slots, speculative=True)
        step.host_picks()
        launch, wait, step = launch + nxt.launch_s, wait + step.wait_s, nxt
    step.host_picks()
    ms = (time.perf_counter() - t) / steps * 1e3
    print(
        f"  host a step: launch {launch / steps * 1e3:.3f} ms, waiting for picks {wait / steps * 1e3:.3f} ms"
    )
    return ms


def by_position(prof) -> None:
    """Device time of each kernel name after the kernel before it (mean us a call, calls a step)."""
    kernels = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                     key=lambda e: e.time_range.start)  # fmt: skip
    totals: dict = {}
    for prev, e in zip(kernels, kernels[1:]):
        key = f"{prev.name[:24]}>{e.name[:24]}"
        n, us = totals.get(key, (0, 0.0))
        totals[key] = (n + 1, us + e.time_range.elapsed_us())
    for key, (n, us) in sorted(totals.items(), key=lambda kv: -kv[1][1])[:16]:
        print(f"  {key:50s} {us / n:8.2f} us x {n / 3:6.1f} a step = {us / 3 / 1e3:.3f} ms")


def profile() -> None:
    sd = StaticDecoder(m, kv)
    print(f"--- PDL {'on' if pdl.ENABLED else 'off'}", flush=True)
    t = time.time()
    sd.step(slots, tok, pos(4200))
    torch.cuda.synchronize()
    print(
        f"{args.quant} slots={args.slots}: first step (compile + capture) {time.time() - t:.1f}s", flush=True
    )
    for i in range(5):
        sd.step(slots, tok, pos(4201 + i))
    torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(50):
        sd.step(slots, tok, pos(4210 + i))
    torch.cuda.synchronize()
    print(f"step() incl. host work: {(time.perf_counter() - t) / 50 * 1e3:.3f} ms", flush=True)
    graph, _ = sd.graphs[sd.bucket(4300)]
    t = time.perf_counter()
    for _ in range(50):
        graph.replay()
    torch.cuda.synchronize()
    print(f"graph replay only: {(time.perf_counter() - t) / 50 * 1e3:.3f} ms", flush=True)
    for bias in ({}, {2: -100.0}):  # gpu.py's timed runs bias EOS away
        print(f"scheduler-like loop, logit_bias={bias}: {scheduler_like_ms(sd, bias):.3f} ms a step", flush=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            graph.replay()
        torch.cuda.synchronize()
    print(
        prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60),
        flush=True,
    )
    by_position(prof)


with torch.inference_mode():
    profile()
