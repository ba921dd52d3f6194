"""bench/gpu.py stages `int8` and `int4`: quantize full-size random Pixtral-12B weights on the GPU, compare
with bf16, write and reload the quantized cache, then the same engine measurements as the bf16 stage.
`int4` also runs a fresh process capped to 12 GiB of GPU memory (`int4-12g`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.gpu_model import DEVICE, PARAMS, PIXTRAL_12B, image_prompt, random_checkpoint, synthetic_tokenizer

COMPARE_POSITIONS = 64  # teacher-forced logits at the last 64 prompt positions (the question and [/INST])


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def prompt_logits(model, prompt, n: int = COMPARE_POSITIONS) -> torch.Tensor:
    """fp32 logits (n, V) at the prompt's last n positions, one prefill from position 0."""
    from pixdesk.engine.cache import KVCache
    from pixdesk.engine.generate import embed_prompt

    kv = KVCache.for_model(model, 1, len(prompt.ids))
    with torch.inference_mode():
        embeds = embed_prompt(model, prompt)[None]
        pos = torch.arange(embeds.shape[1], device=model.device)[None]
        h = model(embeds, pos, kv.view(torch.tensor([0], device=model.device), pos))
        out = model.logits(h[0, -n:])
    del kv
    return out


def agreement(ref: torch.Tensor, got: torch.Tensor) -> dict:
    cos = torch.nn.functional.cosine_similarity(ref, got, dim=-1)  # (n,)
    return {"logit_cosine_vs_bf16": float(cos.mean()), "logit_cosine_min": float(cos.min()),
            "top1_agreement_vs_bf16": float((ref.argmax(-1) == got.argmax(-1)).float().mean()),
            "compared_positions": int(ref.shape[0])}  # fmt: skip


def read_gbps() -> float | None:
    """Read bandwidth as limits.py measures it (a sum over 8 GiB of bf16 in a CUDA graph), in this process."""
    if DEVICE != "cuda":
        return None
    from bench.kernels import graph_time

    x = torch.randn(4 * 2**30 // 2, dtype=torch.bfloat16, device=DEVICE)
    gbps = x.numel() * 2 / graph_time(x.sum, iters=10) / 1e9
    del x
    torch.cuda.empty_cache()
    return gbps


def bytes_limit(model, read_gbps: float | None, context: int) -> dict:
    """Bytes read per decoded token: quantized decoder linears (weights, scales, mins) + KV at `context`."""
    from pixdesk.engine.sizing import kv_bytes_per_token
    from pixdesk.model.quant import quantized_bytes

    weights = quantized_bytes(model)
    kv = kv_bytes_per_token(model) * context
    out = {"decoder_weight_bytes": weights, "kv_bytes_at_context": kv}
    if read_gbps:
        out["limit_tok_s"] = read_gbps * 1e9 / (weights + kv)
    return out


def write_and_reload(model, spec, scratch: Path) -> tuple[object, dict]:
    """Write the quantized cache entry for this model, then load it back through the real loader."""
    from pixdesk.weights.load import CheckpointFiles
    from pixdesk.weights.quantized import _load_entry, write_entry

    root = scratch / "random-checkpoint"
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.json").write_text(json.dumps(PARAMS))
    files = CheckpointFiles(root, "native", root / "params.json", ())
    entry = scratch / f"quantized-{spec.mode}"
    t0 = time.perf_counter()
    write_entry(model, entry, {"quant": spec.describe()})
    res = {
        "cache_write_s": time.perf_counter() - t0,
        "cache_bytes": (entry / "model.safetensors").stat().st_size,
    }
    t0 = time.perf_counter()
    loaded = _load_entry(files, entry, spec, torch.bfloat16, DEVICE, None)
    sync()
    res["load_cached_s"] = time.perf_counter() - t0
    res["load_cached_note"] = "just written, so the file is in the page cache"
    return loaded, res


def stage_quant(args, mode: str, save, engine_measurements) -> None:
    from pixdesk.model.quant import QuantSpec, decoder_input_sizes, quantize_model

    res: dict = {"device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu-smoke",
                 "torch": torch.__version__, "mode": mode}  # fmt: skip
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    res["read_GBps_here"] = read_gbps()
    ckpt = random_checkpoint(PIXTRAL_12B, torch.bfloat16, DEVICE, synthetic_tokenizer(scratch))
    prompt = image_prompt(1, list(range(2000, 2020)))
    ref = prompt_logits(ckpt.model, prompt)
    spec = QuantSpec(mode).for_inputs(decoder_input_sizes(ckpt.model))
    res["group_size"] = spec.group_size if mode == "int4" else None
    sync()
    t0 = time.perf_counter()
    quantize_model(ckpt.model, spec)
    sync()
    res["quantize_s"] = time.perf_counter() - t0
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    res.update(agreement(ref, prompt_logits(ckpt.model, prompt)))
    save(args, mode, res)
    ckpt.model, cache_res = write_and_reload(ckpt.model, spec, scratch)
    res.update(cache_res)
    ckpt.model.fuse_projections()
    res.update(bytes_limit(ckpt.model, res["read_GBps_here"], len(prompt.ids) + 128))
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    save(args, mode, res)
    engine_measurements(ckpt, res, lambda: save(args, mode, res))
    res["autotuned"] = autotuned_configs()
    save(args, mode, res)
    if mode == "int4":
        res["cap_12gib"] = run_capped_child(args, scratch / f"quantized-{mode}")
        save(args, mode, res)


def autotuned_configs() -> dict:
    """The configs the decode GEMVs' autotuners picked in this process, by their keys (the choice is timed on
    lone launches, so it can differ between sittings; bench/int4_configs.py times them in a chain)."""
    from pixdesk.model import int4_mma, int4_triton, quant_triton

    kernels = {"int8": quant_triton._int8_gemv, "int4_rows": int4_triton._gemv_rows,
               "int4_one_row": int4_triton._gemv1, "int4_mma": int4_mma._gemv1_mma}  # fmt: skip
    picks = {name: {str(k[:4]): str(v) for k, v in kern.cache.items()} for name, kern in kernels.items()}
    pinned = int4_mma.PINNED if int4_mma.USE_PINNED else {}
    return {**picks, "int4_mma_pinned": {str(k): str(v) for k, v in pinned.items()}}


def run_capped_child(args, entry: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).with_name("gpu.py")), "--stage", "int4-12g", "--model", str(entry),
           "--scratch", args.scratch]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    try:
        out = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        out = {"rc": proc.returncode, "stderr": proc.stderr[-3000:]}
    return {**out, "wall_s": time.perf_counter() - t0}


def stage_int4_12g(args, engine_for, timed_run) -> None:
    """Fresh process: GPU memory capped to 12 GiB, int4 weights from the cache entry, max_batch 1,
    max_context auto; a 1024x1024 image prefill, then decode until the context holds 8,192 tokens."""
    from pixdesk.model.quant import QuantSpec
    from pixdesk.weights.checkpoint import Checkpoint
    from pixdesk.weights.load import CheckpointFiles
    from pixdesk.weights.quantized import _load_entry

    cuda = DEVICE == "cuda"
    if cuda:
        torch.cuda.set_per_process_memory_fraction(
            12 * 2**30 / torch.cuda.get_device_properties(0).total_memory
        )
    entry = Path(args.model)
    root = Path(args.scratch) / "random-checkpoint"
    files = CheckpointFiles(root, "native", root / "params.json", ())
    meta = json.loads((entry / "meta.json").read_text())
    spec = QuantSpec("int4", meta["quant"]["group_size"])
    t0 = time.perf_counter()
    model = _load_entry(files, entry, spec, torch.bfloat16, DEVICE, None).fuse_projections()
    res = {"cap_gib": 12, "load_s": time.perf_counter() - t0,
           "weights_gib": torch.cuda.memory_allocated() / 2**30 if cuda else None}  # fmt: skip
    ckpt = Checkpoint(model, synthetic_tokenizer(Path(args.scratch)), files, {})
    eng = engine_for(ckpt, 1, prefix_cache_bytes=0, image_cache_bytes=0, prefill_chunk=2048, max_context=0)
    res["max_context_auto"] = eng.scheduler.config.max_context
    prompt = image_prompt(1, list(range(2000, 2020)))
    t0 = time.perf_counter()
    timed_run(eng, image_prompt(2, list(range(2000, 2020))), 600)  # warm-up: kernel autotune, graph captures
    res["warmup_s"] = time.perf_counter() - t0
    n_new = 8192 - len(prompt.ids)
    try:
        run = timed_run(eng, prompt, n_new)
        res["decoded_tokens"] = len(run["times"])
        res["context_reached"] = len(prompt.ids) + len(run["times"])
        res["ttft_ms"] = 1e3 * (run["times"][0] - run["t0"])
        res["decode_tok_s"] = (len(run["times"]) - 1) / (run["times"][-1] - run["times"][0])
        res["ok"] = res["context_reached"] >= 8192
    except Exception as exc:  # an OOM here is the result to report, not a crash
        res["ok"], res["error"] = False, repr(exc)[:500]
    eng.stop()
    if cuda:
        res["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        res["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(res), flush=True)
