"""GPU benchmark: full-size Pixtral-12B shapes with random weights (no files), in stages of a few minutes.

Runs from source on a bare GPU machine (`PYTHONPATH=.`; torch, safetensors, numpy, pillow, tiktoken).

    python bench/gpu.py --stage limits    # ../shared/bench/limits.py, unmodified (read BW, GEMV-chain ceiling)
    python bench/gpu.py --stage peer      # ../shared/bench/peer_transformers.py, unmodified
    python bench/gpu.py --stage bf16      # pixdesk: decode b1/b8, TTFT cold/warm, peak memory
    python bench/gpu.py --stage check     # pixdesk bf16 logits vs transformers on the same weights
    python bench/gpu.py --stage ready     # a real checkpoint-sized file: load_s, host RSS, time to ready
    python bench/gpu.py --stage int8      # quantize on the GPU: accuracy vs bf16, cache write/reload, engine
    python bench/gpu.py --stage int4      # the same for int4, plus a fresh process capped to 12 GiB
    python bench/gpu.py --stage ab        # switchable decode variants (AB_VARIANTS): b1 tok/s, same greedy ids
                                          # (AB=baseline,cublaslt picks variants; the baseline always runs)
    python bench/gpu.py --merge DIR       # join DIR/stage-*.json into bench/results/<date>-<device>.json

Each stage writes stage-<name>.json under $OUT (or --out). Decode is measured at a fixed context: the
4,183-token 1024x1024-image prompt plus 128 generated tokens; batch 8 uses eight such sequences.
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from source: `python bench/gpu.py` without an install

from bench.gpu_ab import host_ms_per_step, stage_ab  # noqa: E402
from bench.gpu_clocks import ClockSampler, run_clocks  # noqa: E402
from bench.gpu_model import (  # noqa: E402
    DEVICE,
    IMAGE_GRID,
    PIXTRAL_12B,
    image_prompt,
    random_checkpoint,
    served_checkpoint,
    synthetic_tokenizer,
)
from bench.gpu_quant import stage_int4_12g, stage_quant  # noqa: E402
from bench.gpu_ready import default_scratch, stage_ready, stage_ready_child  # noqa: E402

QUESTION = list(range(2000, 2020))


def out_dir(args) -> Path:
    d = Path(args.out or os.environ.get("OUT") or "bench-out")
    d.mkdir(parents=True, exist_ok=True)
    return d


def apply_kernel_knobs() -> dict:
    """`INT4_DECODE=triton|tinygemm` and `INT8_SPLIT_K=0|1` in the environment override the library defaults
    for this run (A/B without a commit); the values in force are recorded in every stage file."""
    from pixdesk.model import quant, quant_triton

    if v := os.environ.get("INT4_DECODE"):
        quant.INT4_DECODE = v
    if v := os.environ.get("INT8_SPLIT_K"):
        quant_triton.INT8_SPLIT_K = v == "1"
    return {"INT4_DECODE": quant.INT4_DECODE, "INT8_SPLIT_K": quant_triton.INT8_SPLIT_K}


def save(args, name: str, result: dict) -> None:
    result = {**result, "stage": name, "argv": sys.argv, "when": time.strftime("%Y-%m-%d %H:%M:%S"),
              "git_sha": os.environ.get("PIXDESK_GIT_SHA"), "kernel_knobs": apply_kernel_knobs()}  # fmt: skip
    path = out_dir(args) / f"stage-{name}.json"
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1), flush=True)


# ------------------------------------------------------------------------------------------ peer stages


def run_shared(args, script: str, name: str) -> None:
    shared = Path(args.shared)
    tmp = out_dir(args) / f"{name}-raw"
    tmp.mkdir(exist_ok=True)
    cmd = [sys.executable, str(shared / script)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, "OUT": str(tmp)}, capture_output=True, text=True)
    files = list(tmp.glob("*.json"))
    result = json.loads(files[0].read_text()) if files else {}
    save(args, name, {"command": " ".join(cmd), "rc": proc.returncode, "wall_s": time.perf_counter() - t0,
                      "result": result, "stderr_tail": proc.stderr[-2000:]})  # fmt: skip


# ------------------------------------------------------------------------------------------ pixdesk bf16


def gpu_busy(eng) -> dict:
    """The last b1 prompt again (its prefix cached, so the run is ~all decode) under the profiler: the time
    the GPU executes against the span of its work (bench/gpu_busy.py), i.e. the device's idle share."""
    import torch

    from bench.gpu_busy import busy_report, device_intervals

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        r = timed_run(eng, image_prompt(21, QUESTION), 129)
        torch.cuda.synchronize()
    report = busy_report(device_intervals(prof))
    return {**report, "tokens": len(r["ids"]), "decode_tok_s": 128 / (r["times"][-1] - r["times"][0])}


def engine_for(ckpt, max_batch: int, start: bool = True, **kw):
    from pixdesk.engine.backend import LocalEngine
    from pixdesk.engine.scheduler_config import SchedulerConfig

    context = len(image_prompt(0, QUESTION).ids) + 169  # room for 128+ generated tokens
    settings = dict(max_batch=max_batch, max_context=context, prefill_chunk=8192, max_queue=64,
                    per_client_active=max_batch)  # fmt: skip
    eng = LocalEngine(ckpt, SchedulerConfig(**{**settings, **kw}))
    return eng.start() if start else eng


def timed_run(eng, prompt, max_tokens: int) -> dict:
    """Submit and consume; returns the submit time, per-token arrival times and the finish."""
    from pixdesk.engine.events import Delta, Finish
    from pixdesk.engine.sampling import SamplingParams

    t0 = time.perf_counter()
    # EOS is biased away: random weights must not end a timed run early.
    sub = eng.submit(prompt, SamplingParams(max_tokens=max_tokens, logit_bias={2: -100.0}))
    times, ids, finish = [], [], None
    for ev in sub:
        if isinstance(ev, Delta):
            times += [time.perf_counter()] * len(ev.token_ids)
            ids += ev.token_ids
        elif isinstance(ev, Finish):
            finish = ev
    if finish.reason not in ("length", "stop"):
        raise RuntimeError(f"request failed: {finish}")
    return {"t0": t0, "times": times, "ids": ids, "finish": finish}


def concurrent_runs(eng, prompts, max_tokens: int) -> list[dict]:
    import threading

    results: list[dict | None] = [None] * len(prompts)

    def go(i):
        results[i] = timed_run(eng, prompts[i], max_tokens)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu-smoke"


def sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def stage_bf16(args) -> None:
    import torch

    res: dict = {"device": device_name(), "torch": torch.__version__}
    t0 = time.perf_counter()
    ckpt = served_checkpoint("none", out_dir(args))
    sync()
    res["init_s"] = time.perf_counter() - t0
    engine_measurements(ckpt, res, lambda: save(args, "bf16", res))


def engine_measurements(ckpt, res: dict, checkpoint) -> None:
    """TTFT cold/warm and decode b1 (one engine), decode b8 (another), peak memory; `checkpoint()` saves."""
    import torch

    eng = engine_for(ckpt, 1, prefix_cache_bytes=2 * 2**30)
    t0 = time.perf_counter()
    timed_run(eng, image_prompt(10_000, QUESTION), 4)  # cuBLAS/cuDNN warm-up, decode graph for short buckets
    timed_run(eng, image_prompt(10_001, QUESTION), 130)  # compiles/captures the long bucket
    res["warmup_s"] = time.perf_counter() - t0
    checkpoint()
    cold = [timed_run(eng, image_prompt(seed, QUESTION), 1) for seed in (1, 2, 3)]
    res["ttft_cold_ms_all"] = [1e3 * (r["times"][0] - r["t0"]) for r in cold]
    res["ttft_cold_ms"] = sorted(res["ttft_cold_ms_all"])[1]
    # Warm: the last cold image (seed 3) asked again with new questions, right after the cold runs so its
    # prefix is still cached. The first follow-up also captures the short-prefill graph for this key
    # bucket (engine/graph_prefill.py), so it is reported on its own; the median of the next three is
    # `ttft_warm_ms`. (Until 1e89f79 the default-chunk runs came first and evicted the image's prefix.)
    before = eng.stats()["prefilled_tokens"]
    warm = [timed_run(eng, image_prompt(3, [1100 + i, 1200, 1300, 1400]), 1) for i in range(4)]
    res["ttft_warm_ms_all"] = [1e3 * (r["times"][0] - r["t0"]) for r in warm]
    res["ttft_warm_first_ms"] = res["ttft_warm_ms_all"][0]
    res["ttft_warm_ms"] = sorted(res["ttft_warm_ms_all"][1:])[1]
    res["warm_prefilled_tokens"] = eng.stats()["prefilled_tokens"] - before  # small when the prefix hits
    res["ttft_cold_ms_default_chunk"] = ttft_with_default_chunk(eng)
    checkpoint()
    before = eng.stats()
    with ClockSampler() as clocks:
        runs = [timed_run(eng, image_prompt(20 + i, QUESTION), 129) for i in range(2)]
        after = eng.stats()
        # The last prompt again, its prefix cached: no long prefill right before the decode, so the power
        # controller does not hold the SM clock down through its first tokens (bench/NOTES.md, session 16).
        cached = timed_run(eng, image_prompt(21, QUESTION), 129)
    res["decode_b1_sm_mhz"] = [run_clocks(clocks, r) for r in [*runs, cached]]
    res["decode_tok_s_b1_cached_prefix"] = 128 / (cached["times"][-1] - cached["times"][0])
    # how many of the timed runs' decode steps were launched before the previous step's picks were read
    res["decode_b1_steps"] = after["decode_steps"] - before["decode_steps"]
    res["decode_b1_pipelined_steps"] = after["pipelined_steps"] - before["pipelined_steps"]
    res.update({f"decode_b1_{k}": v for k, v in host_ms_per_step(before, after).items()})
    res["decode_tok_s_b1_all"] = [128 / (r["times"][-1] - r["times"][0]) for r in runs]  # client-side
    res["decode_tok_s_b1"] = max(res["decode_tok_s_b1_all"])
    res["decode_tok_s_b1_engine"] = eng.scheduler.stats.decode_tok_s(1)
    if DEVICE == "cuda":
        try:  # a diagnostic: its failure must not cost the stage its figures
            res["decode_b1_gpu_busy"] = gpu_busy(eng)
        except Exception as exc:  # noqa: BLE001
            res["decode_b1_gpu_busy"] = {"error": repr(exc)}
    checkpoint()
    res["prompt_tokens"] = len(image_prompt(0, QUESTION).ids)
    eng.stop()
    del eng
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    eng8 = engine_for(ckpt, 8, prefix_cache_bytes=0)
    concurrent_runs(eng8, [image_prompt(100 + i, QUESTION) for i in range(8)], 12)  # warm-up / capture
    before = eng8.scheduler.stats.decode_seconds[8], eng8.scheduler.stats.seqs_per_step[8]
    concurrent_runs(eng8, [image_prompt(200 + i, QUESTION) for i in range(8)], 129)
    st = eng8.scheduler.stats
    steps, secs = st.seqs_per_step[8] - before[1], st.decode_seconds[8] - before[0]
    res["decode_tok_s_b8"] = (
        8 * steps / secs if secs else None
    )  # engine-side, steps with all 8, sampling incl.
    res["b8_steps"] = steps
    res["b8_mean_seqs_per_step"] = eng8.stats()["mean_seqs_per_decode_step"]
    # One request alone on the 8-slot engine: what a lone user of a daemon with spare slots gets (its idle
    # slots read one key each; before session 7 each read the whole key bucket).
    lone = timed_run(eng8, image_prompt(300, QUESTION), 129)
    res["decode_tok_s_b1_in_8_slots"] = 128 / (lone["times"][-1] - lone["times"][0])
    eng8.stop()
    res["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9 if DEVICE == "cuda" else None
    checkpoint()


def ttft_with_default_chunk(eng) -> float:
    """Cold TTFT with the daemon's default prefill chunks (the engines here prefill in one 8,192-token chunk;
    the daemon takes `SchedulerConfig.prefill_chunk` pieces while others decode and `solo_prefill_chunk`
    ones while none does, as here: "auto" since session 16, 8,192 on an H200, so the two figures should
    agree there; 2,048 before)."""
    from dataclasses import replace

    from pixdesk.engine.scheduler_config import SchedulerConfig

    config = eng.scheduler.config
    eng.scheduler.config = replace(config, prefill_chunk=SchedulerConfig().prefill_chunk)
    try:
        runs = [timed_run(eng, image_prompt(seed, QUESTION), 1) for seed in (4, 5, 6)]
    finally:
        eng.scheduler.config = config
    return sorted(1e3 * (r["times"][0] - r["t0"]) for r in runs)[1]


# ------------------------------------------------------------------------------------------ check


def stage_check(args) -> None:
    import torch

    from bench.gpu_model import hf_from_ours, our_full_logits

    res: dict = {"device": device_name(), "torch": torch.__version__}
    ckpt = random_checkpoint(PIXTRAL_12B, torch.bfloat16, DEVICE, synthetic_tokenizer(out_dir(args)))
    prompt = image_prompt(1, QUESTION)
    ours = our_full_logits(ckpt.model, prompt)  # (V,) fp32 at the last position
    hf = hf_from_ours(ckpt.model)  # moves our tensors into an HF model (ours is consumed)
    del ckpt
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    rows, cols = IMAGE_GRID
    with torch.inference_mode():
        ref = (
            hf(
                input_ids=torch.tensor([prompt.ids], device=DEVICE),
                pixel_values=prompt.images[0].pixels[None].to(DEVICE, torch.bfloat16),
                image_sizes=torch.tensor([[rows * 16, cols * 16]], device=DEVICE),
            )
            .logits[0, -1]
            .float()
        )
    res["logit_rel_err_vs_transformers"] = float((ours - ref).norm() / ref.norm())
    res["top1_equal"] = bool(ours.argmax() == ref.argmax())
    res["max_abs_diff_over_max_abs"] = float((ours - ref).abs().max() / ref.abs().max())
    import transformers

    res["transformers"] = transformers.__version__
    save(args, "check", res)


# ------------------------------------------------------------------------------------------ a/b


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", choices=["limits", "peer", "bf16", "check", "ready", "ready-child", "int8", "int4",
                                        "int4-12g", "ab"])  # fmt: skip
    ap.add_argument("--merge", metavar="DIR")
    ap.add_argument("--out")
    ap.add_argument("--shared", default=str(ROOT / ".peer"), help="folder holding shared/bench scripts")
    ap.add_argument("--scratch", default=None, help="where the ready stage writes its 25 GB checkpoint")
    ap.add_argument("--model")
    args = ap.parse_args()
    args.scratch = args.scratch or default_scratch()
    apply_kernel_knobs()
    if args.merge:
        from bench.gpu_merge import merge

        merge(Path(args.merge))
        return
    stages = {
        "limits": lambda: run_shared(args, "limits.py", "limits"),
        "peer": lambda: run_shared(args, "peer_transformers.py", "peer"),
        "bf16": lambda: stage_bf16(args),
        "check": lambda: stage_check(args),
        "ready": lambda: stage_ready(args, save),
        "ready-child": lambda: stage_ready_child(args, engine_for, timed_run, image_prompt(1, QUESTION)),
        "int8": lambda: stage_quant(args, "int8", save, engine_measurements),
        "int4": lambda: stage_quant(args, "int4", save, engine_measurements),
        "int4-12g": lambda: stage_int4_12g(args, engine_for, timed_run),
        "ab": lambda: stage_ab(
            args, save, engine_for, timed_run, lambda seed: image_prompt(seed, QUESTION), out_dir(args)
        ),
    }
    stages[args.stage]()


if __name__ == "__main__":
    main()
