"""Where the time to first token goes on the full-size model: the 1024x1024 image prompt (4,183 tokens), eager
blocks vs compiled regions (model/regions.py), part by part, against each part's FLOP minimum.

    PYTHONPATH=. python3 bench/profile_prefill.py [--quant int8|int4] [--profile]

Variants: eager blocks, compiled regions, and regions with SDPA's native GQA for the causal prefill
(`model.layers.NATIVE_GQA`, on by default since this measured it: 157.8 vs 159.9 ms).

Parts: the vision encoder + adapter, the decoder prefill (one chunk) with the LM head at the last position, and a
follow-up question (20 tokens after the image prompt, the prefix-hit case of "warm" TTFT).
"""

import argparse
import time

import torch

from bench.gpu_merge import ttft_flop_minimum
from bench.gpu_model import DEVICE, IMAGE_GRID, PIXTRAL_12B, image_prompt, random_model
from pixdesk.engine.cache import KVCache
from pixdesk.engine.generate import prefill
from pixdesk.model import layers
from pixdesk.model.quant import QuantSpec, quantize_model
from pixdesk.model.regions import CompiledBlocks

QUESTION = list(range(1000, 1020))


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeat: int = 3) -> float:
    """Best of `repeat` runs, ms (after one warm-up run)."""
    fn()
    sync()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, (time.perf_counter() - t) * 1e3)
    return best


def matmul_tflops() -> float:
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device=DEVICE)
    ms = timed(lambda: a @ a, repeat=10)
    return 2 * 8192**3 / (ms * 1e-3) / 1e12


def flops_parts() -> dict[str, float]:
    t, v = PIXTRAL_12B.text, PIXTRAL_12B.vision
    L = IMAGE_GRID[0] * IMAGE_GRID[1]
    vis_layer = 4 * v.hidden_size**2 + 3 * v.hidden_size * v.intermediate_size
    vision = 2 * L * (v.num_hidden_layers * vis_layer + 3 * 256 * v.hidden_size)
    vision += (
        2 * L * (v.hidden_size * t.dim + t.dim * t.dim) + 4 * v.hidden_size * L * L * v.num_hidden_layers
    )
    return {"vision": vision, "decoder": ttft_flop_minimum() - vision}


def kernel_tables(m, kv, embeds, pixels, blocks) -> None:
    """The CUDA kernels of the regions' vision encoder and decoder prefill, and their matmuls by shape."""
    parts = (("vision encoder", lambda: m.encode_images(pixels, blocks)),
             ("decoder prefill", lambda: prefill(m, kv, 0, embeds, 0, chunk=8192, blocks=blocks)))  # fmt: skip
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    for label, run in parts:
        run()
        sync()
        with torch.profiler.profile(activities=acts, record_shapes=True) as prof:
            run()
            sync()
        print(f"## {label}: CUDA kernels")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=24, max_name_column_width=90))
        print(f"## {label}: matmuls by input shape")
        by_shape = [
            e for e in prof.key_averages(group_by_input_shape=True) if e.key in ("aten::mm", "aten::addmm")
        ]
        by_shape.sort(key=lambda e: -e.device_time_total)
        for e in by_shape[:12]:
            us = e.device_time_total / max(e.count, 1)
            print(f"{e.key} {e.input_shapes} x{e.count}: {us:.1f} us each")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quant", choices=["none", "int8", "int4"], default="none")
    ap.add_argument(
        "--profile", action="store_true", help="also print the kernel table of the regions prefill"
    )
    ap.add_argument("--regions-only", action="store_true", help="time only the compiled regions (native GQA)")
    args = ap.parse_args()
    tflops = matmul_tflops()
    m = random_model(PIXTRAL_12B, torch.bfloat16, DEVICE)
    if args.quant != "none":
        quantize_model(m, QuantSpec(args.quant))
        torch.cuda.empty_cache()
    m.fuse_projections()
    prompt = image_prompt(0, QUESTION)
    n = len(prompt.ids)
    kv = KVCache.for_model(m, 1, n + 64)
    pixels = [prompt.images[0].pixels]
    follow = m.tok_embeddings(torch.tensor(QUESTION, device=DEVICE))
    rows = []
    with torch.inference_mode():
        feats = m.encode_images(pixels)
        embeds = m.embed(torch.tensor([prompt.ids], device=DEVICE), feats)[0]
        regions = CompiledBlocks()
        want = prefill(m, kv, 0, embeds, 0, chunk=8192)
        variants = [
            ("eager", None, False),
            ("regions", regions, False),
            ("regions + native GQA", regions, True),
        ]
        for label, blocks, gqa in variants[2:] if args.regions_only else variants:
            layers.NATIVE_GQA = gqa
            got = prefill(m, kv, 0, embeds, 0, chunk=8192, blocks=blocks)
            print(
                f"{label}: last-position logits rel err vs eager {float((got - want).abs().max() / want.abs().max()):.2e}"
            )
            t0 = time.perf_counter()
            m.encode_images(pixels, blocks)
            prefill(m, kv, 0, embeds, 0, chunk=8192, blocks=blocks)
            prefill(m, kv, 0, follow, n, blocks=blocks)
            sync()
            first = time.perf_counter() - t0
            vis = timed(lambda b=blocks: m.encode_images(pixels, b))
            dec = timed(lambda b=blocks: prefill(m, kv, 0, embeds, 0, chunk=8192, blocks=b))
            fol = timed(lambda b=blocks: prefill(m, kv, 0, follow, n, blocks=b), repeat=10)
            rows.append((label, vis, dec, fol, first))
        layers.NATIVE_GQA = True
        if args.profile:
            kernel_tables(m, kv, embeds, pixels, CompiledBlocks())
    mins = {k: f / (tflops * 1e12) * 1e3 for k, f in flops_parts().items()}
    print(f"{args.quant}: matmul {tflops:.0f} TFLOP/s; FLOP minimum: vision {mins['vision']:.1f} ms, "
          f"decoder {mins['decoder']:.1f} ms ({n} tokens)")  # fmt: skip
    print(
        "| blocks | vision ms | decoder prefill ms | vision+decoder vs FLOP min | follow-up 20 tok ms | first run s |"
    )
    print("|---|---|---|---|---|---|")
    for label, vis, dec, fol, first in rows:
        ratio = (vis + dec) / (mins["vision"] + mins["decoder"])
        print(f"| {label} | {vis:.1f} | {dec:.1f} | {ratio:.2f} | {fol:.1f} | {first:.1f} |")


if __name__ == "__main__":
    main()
