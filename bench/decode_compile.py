"""The decode step compiled whole (40 layers unrolled) vs as compiled pieces, one layer function called 40
times (`engine.static.LAYER_REGIONS`): compile time (Dynamo's trace is most of a warm engine start) and, on a
GPU, the step's replay time.

    PYTHONPATH=. python3 bench/decode_compile.py                 # full-size 12B shapes on CUDA
    PYTHONPATH=. .venv/bin/python bench/decode_compile.py --small  # 40 small layers: compile time only (CPU)

Each variant runs in a fresh process (no Dynamo state shared); prints one table row each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def child(layer_regions: bool, small: bool) -> dict:
    from bench.gpu_model import PIXTRAL_12B, random_model
    from pixdesk.engine.cache import KVCache
    from pixdesk.engine.static import StaticDecoder
    from pixdesk.weights.tiny import TINY_ARGS

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    args = replace(TINY_ARGS, text=replace(TINY_ARGS.text, n_layers=40)) if small else PIXTRAL_12B
    dtype = torch.bfloat16 if cuda else torch.float32
    model = random_model(args, dtype, device).fuse_projections()
    context = 4352 if not small else 256
    kv = KVCache.for_model(model, 1, context)
    dec = StaticDecoder(model, kv, compile=True, layer_regions=layer_regions, bucket_size=context)
    slots, tokens, positions = torch.tensor([0]), torch.tensor([5]), torch.tensor([context - 50])
    with torch.inference_mode():
        t0 = time.perf_counter()
        dec.step(slots, tokens, positions)
        if cuda:
            torch.cuda.synchronize()
        first_s = time.perf_counter() - t0
        res = {"layer_regions": layer_regions, "first_step_s": first_s}
        if cuda:  # replay time of the captured step
            for _ in range(5):
                dec.step(slots, tokens, positions)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(50):
                dec.step(slots, tokens, positions)
            torch.cuda.synchronize()
            res["step_ms"] = (time.perf_counter() - t0) / 50 * 1e3
    times = getattr(torch._dynamo.utils, "compilation_time_metrics", {})
    res["dynamo_s"] = sum(times.get("_compile.compile_inner", [])) or None
    res["bytecode_tracing_s"] = sum(times.get("bytecode_tracing", [])) or None
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true", help="40 tiny layers: the trace cost without 12B weights")
    ap.add_argument("--child", choices=["whole", "regions"])
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child == "regions", a.small)))
        return
    print("| step compiled as | first step s (compile + capture) | Dynamo s | of which tracing s | step ms |")
    print("|---|---|---|---|---|")
    for variant in ("whole", "regions"):
        cmd = [sys.executable, __file__, "--child", variant] + (["--small"] if a.small else [])
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
        if out.returncode:
            print(f"| {variant} | failed: {out.stderr.strip().splitlines()[-1:]} | | | |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        cells = [f"{r[k]:.3f}" if r.get(k) else "-" for k in ("dynamo_s", "bytecode_tracing_s", "step_ms")]
        print(f"| {variant} | {r['first_step_s']:.1f} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
