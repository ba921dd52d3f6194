"""bench/gpu.py's `ready` stage: time to ready in fresh processes, from a real checkpoint-sized file.

The stage writes a 25.4 GB native checkpoint with random data, reads it into the page cache, then starts two
children (`--stage ready-child`): cold (empty compile cache) and warm. Each loads through the real loader,
builds the engine (compile, capture, warm-up) and answers one request; ready = imports + load + engine start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.gpu_model import DEVICE

ROOT = Path(__file__).resolve().parents[1]


def sync() -> None:
    if DEVICE == "cuda":
        import torch

        torch.cuda.synchronize()


def stage_ready(args, save) -> None:
    from bench.gpu_model import write_real_checkpoint

    res: dict = {}
    ckpt_dir = Path(args.scratch) / "pixtral-12b-random"
    t0 = time.perf_counter()
    res["checkpoint_bytes"] = write_real_checkpoint(ckpt_dir)
    res["write_s"] = time.perf_counter() - t0
    res["page_cache_GBps"] = _warm_page_cache(ckpt_dir / "consolidated.safetensors")  # "weights in the page cache"
    res["host_memory"] = _host_memory()  # why the page cache may not keep the file
    cache = Path(args.scratch) / "compile-cache"
    # READY_VARIANTS=no_prewarm,reserve adds warm children with one change each (VARIANTS says which).
    # READY_LOAD_ONLY=1: children stop after the load (a quick A/B of the load alone).
    # A third start ("warm_again"): in session 7 the second start paid ~6.5 s that the third did not; the
    # caches' file counts after each child say what the second one still wrote.
    extra = [v for v in os.environ.get("READY_VARIANTS", "").split(",") if v]
    for label in ("cold", "warm", "warm_again", *extra):
        cmd = [sys.executable, str(ROOT / "bench" / "gpu.py"), "--stage", "ready-child", "--model", str(ckpt_dir)]
        t0 = time.perf_counter()
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT),
               "PIXDESK_BENCH_T0": repr(time.time()), "PIXDESK_READY_VARIANT": label}  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        child = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {}
        res[f"process_{label}_s"] = time.perf_counter() - t0  # includes one request and the shutdown
        if child:  # ready = spawn -> loaded, compiled, captured: when the daemon would answer
            res[f"ready_{label}_s"] = child["imports_s"] + child["load_s"] + child["engine_start_s"]
        res[f"child_{label}"] = child or {"rc": proc.returncode, "stderr": proc.stderr[-3000:]}
        res[f"caches_after_{label}"] = _cache_census([cache, Path.home() / ".triton" / "cache"])
        save(args, "ready", res)  # after each child: a run cut short keeps what it measured


def _cache_census(dirs: list[Path]) -> dict:
    """Files and bytes under each cache dir, and under each of its top-level folders."""
    out = {}
    for d in dirs:
        if not d.exists():
            continue
        for top in [d, *sorted(p for p in d.iterdir() if p.is_dir())]:
            files = [f for f in top.rglob("*") if f.is_file()]
            out[str(top)] = {"files": len(files), "bytes": sum(f.stat().st_size for f in files)}
    return out


def _warm_page_cache(path: Path) -> float:
    """Flush the freshly written file, then read it twice (the second read is timed: GB/s from the cache)."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    from bench.load_speed import warm

    warm(path)
    t0 = time.perf_counter()
    warm(path)
    return path.stat().st_size / (time.perf_counter() - t0) / 1e9


def _host_memory() -> dict:
    """GB: MemTotal / MemAvailable / Cached from /proc/meminfo, the cgroup's memory.max, /dev/shm's free."""
    out: dict = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, value = line.split(":", 1)
            if key in ("MemTotal", "MemAvailable", "Cached"):
                out[key] = int(value.split()[0]) * 1024 / 1e9
    except OSError:
        pass
    try:
        raw = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        out["cgroup_memory_max"] = raw if raw == "max" else int(raw) / 1e9
    except (OSError, ValueError):
        pass
    try:
        st = os.statvfs("/dev/shm")
        out["dev_shm_free"] = st.f_bavail * st.f_frsize / 1e9
    except OSError:
        pass
    return out


VARIANTS = {
    "no_prewarm": "no compiler imports beside the load (before session 4)",
    "reserve": "the load's device memory reserved as one block first (one cudaMalloc, not ~400)",
}


def stage_ready_child(args, engine_for, timed_run, prompt) -> None:
    """A fresh process: load through the real loader, warm up, report; the parent times the whole."""
    import resource

    import torch

    from pixdesk.engine.prewarm import import_compiler_in_background
    from pixdesk.weights.checkpoint import load_checkpoint

    since_spawn_s = time.time() - float(os.environ.get("PIXDESK_BENCH_T0", time.time()))  # start + imports
    variant = os.environ.get("PIXDESK_READY_VARIANT", "")
    torch.cuda.init()
    t0 = time.perf_counter()
    torch.empty(1, device=DEVICE)  # the CUDA context, timed apart from the load
    sync()
    context_s = time.perf_counter() - t0
    parts = _time_load_parts()
    t0 = time.perf_counter()
    if variant == "reserve":
        reserve_device_memory(args.model)
    if variant != "no_prewarm":
        import_compiler_in_background(DEVICE)  # as the daemon does (cli/common.py)
    ckpt = load_checkpoint(args.model, dtype=torch.bfloat16, device=DEVICE)
    ckpt.model.fuse_projections()
    sync()
    load_s = time.perf_counter() - t0
    if os.environ.get("READY_LOAD_ONLY") == "1":
        print(json.dumps({"imports_s": since_spawn_s + context_s, "cuda_context_s": context_s, "load_s": load_s,
                          "load_parts_s": parts, "variant": VARIANTS.get(variant, variant), "engine_start_s": 0.0}))
        return
    t1 = time.perf_counter()
    eng = engine_for(ckpt, 1, start=False, prefix_cache_bytes=2**30)  # KV sizing
    construct_s = time.perf_counter() - t1
    eng.start()  # compile + capture (warm-up)
    start_s = time.perf_counter() - t1
    compile_times = torch._dynamo.utils.compile_times(repr="str")
    t1 = time.perf_counter()
    timed_run(eng, prompt, 8)
    first_s = time.perf_counter() - t1
    eng.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(json.dumps({"imports_s": since_spawn_s + context_s, "cuda_context_s": context_s, "load_s": load_s,
                      "load_parts_s": parts, "variant": VARIANTS.get(variant, variant),
                      "engine_start_s": start_s, "engine_construct_s": construct_s,
                      "compile_times": compile_times,
                      "engine_warmup_s": eng.warmup_s, "warmup_parts_s": eng.warmup_parts,
                      "first_request_s": first_s,
                      "peak_host_rss_gb": rss * 1.073741824}))  # fmt: skip


def reserve_device_memory(model_dir) -> None:
    """One block the size of the checkpoint, freed into torch's caching allocator: the load's tensors are then
    carved from it instead of ~400 separate cudaMallocs (an A/B: does the first load in a process pay for
    the allocations?)."""
    import torch

    size = sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))
    block = torch.empty(size, dtype=torch.uint8, device=DEVICE)
    del block


def _time_load_parts() -> dict:
    """Seconds inside load_checkpoint per step (manifest, weights, tokenizer), filled in as they run."""
    import pixdesk.weights.checkpoint as checkpoint

    parts: dict = {}

    def timed(name, fn):
        def run(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                sync()
                parts[name] = time.perf_counter() - t

        return run

    for name in ("find_checkpoint", "manifest", "build_model", "load_tokenizer"):
        setattr(checkpoint, name, timed(name, getattr(checkpoint, name)))
    return parts



def default_scratch() -> str:
    """RAM (/dev/shm) when it holds the checkpoint with room to spare: writing 25 GB there takes seconds
    instead of ~50 s on disk, and the ready stage measures loads from the page cache anyway."""
    try:
        st = os.statvfs("/dev/shm")
        if st.f_bavail * st.f_frsize > 40 * 2**30:
            return "/dev/shm/pixdesk-bench"
    except OSError:
        pass
    return "/tmp/pixdesk-bench"
