"""What does the first load in a process pay for? Fresh processes load the same checkpoint from RAM
to the GPU with one change each, in rounds, and print a table:

- `default`: as the daemon loads (compiler imports on a thread beside it);
- `no_prewarm`: no compiler imports beside the load (before session 4);
- `reserve`: the load's device memory reserved as one block first (one cudaMalloc instead of ~400).

    PYTHONPATH=. python3 bench/load_gil.py [--dir /dev/shm/pixdesk-load] [--shape 12b] [--rounds 2]

Each child times the load alone: torch imported and the CUDA context made before the clock starts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("default", "no_prewarm", "reserve")


def child(model_dir: Path, variant: str) -> dict:
    import torch

    from bench.gpu_ready import reserve_device_memory
    from pixdesk.engine.prewarm import import_compiler_in_background
    from pixdesk.weights.load import build_model, find_checkpoint

    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    if variant == "reserve":
        reserve_device_memory(model_dir)
    thread = None if variant == "no_prewarm" else import_compiler_in_background("cuda")
    build_model(find_checkpoint(model_dir), device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    if thread is not None:
        thread.join()
    return {"variant": variant, "load_s": load_s, "imports_done_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path("/dev/shm/pixdesk-load"))
    ap.add_argument("--shape", default="12b")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", default=None)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.dir, a.child)))
        return
    from bench.load_speed import SHAPES, warm, write_random

    t0 = time.perf_counter()
    d = write_random(a.dir / a.shape, SHAPES[a.shape])
    weights = d / "consolidated.safetensors"
    warm(weights)
    gb = weights.stat().st_size / 1e9
    print(f"{gb:.1f} GB checkpoint in {a.dir} (written and read once in {time.perf_counter() - t0:.0f} s)")
    print("| round | variant | load s | GB/s | imports done s |\n|---|---|---|---|---|", flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for r in range(a.rounds):
        for v in VARIANTS:
            cmd = [sys.executable, __file__, "--dir", str(d), "--child", v]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            try:
                res = json.loads(proc.stdout.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                print(f"| {r} | {v} | failed: {proc.stderr[-300:]!r} | | |", flush=True)
                continue
            s = res["load_s"]
            print(f"| {r} | {v} | {s:.2f} | {gb / s:.1f} | {res['imports_done_s']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
