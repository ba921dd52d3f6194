"""CPU benchmark of the weight formats on a mid-size random model: decode and prefill speed, weight bytes,
and how close int8 / int4 logits stay to the float model.

    PYTHONPATH=. .venv/bin/python bench/cpu.py [--dtype fp32|bf16] [--threads N]

Model: dim 1024, 8 layers, GQA 16/4 heads of 64, hidden 4096, vocab 32,768 (every input size a multiple of
128, so int4 uses the same group size as Pixtral-12B and torch's CPU kernels). Decode: 64 greedy steps after
a 256-token prompt, batch 1, eager (the CPU path of the engine). Prints a table; writes
bench/results/cpu-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pixdesk.engine.cache import KVCache  # noqa: E402
from pixdesk.engine.generate import decode_step, prefill  # noqa: E402
from pixdesk.model.args import ModelArgs, TextArgs  # noqa: E402
from pixdesk.model.pixtral import Pixtral  # noqa: E402
from pixdesk.model.quant import QuantSpec, quantize_model, quantized_bytes  # noqa: E402
from pixdesk.weights.load import _assign  # noqa: E402
from pixdesk.weights.tiny import random_state_dict  # noqa: E402

MID = ModelArgs(
    text=TextArgs(dim=1024, n_layers=8, head_dim=64, hidden_dim=4096, n_heads=16, n_kv_heads=4, vocab_size=32768,
                  rope_theta=1e6, norm_eps=1e-5),
    vision=None,
)  # fmt: skip
PROMPT, STEPS = 256, 64


def build(dtype: torch.dtype) -> Pixtral:
    with torch.device("meta"):
        model = Pixtral(MID)
    for name, t in random_state_dict(MID, seed=0).items():
        _assign(model, name, t.to(dtype))
    return model.eval()


def run(model: Pixtral, ids: torch.Tensor) -> dict:
    kv = KVCache.for_model(model, 1, PROMPT + STEPS + 1)
    slot = torch.tensor([0])
    with torch.inference_mode():
        t0 = time.perf_counter()
        logits = prefill(model, kv, 0, model.tok_embeddings(ids), 0, chunk=PROMPT)
        prefill_s = time.perf_counter() - t0
        first = logits.clone()
        tokens, t0 = [], time.perf_counter()
        tok = int(logits.argmax())
        for i in range(STEPS):
            tokens.append(tok)
            logits = decode_step(model, kv, slot, torch.tensor([tok]), torch.tensor([PROMPT + i]))[0]
            tok = int(logits.argmax())
        decode_s = time.perf_counter() - t0
    return {"prefill_tok_s": PROMPT / prefill_s, "decode_tok_s": STEPS / decode_s, "logits": first, "tokens": tokens}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    ids = torch.randint(100, MID.text.vocab_size, (PROMPT,), generator=torch.Generator().manual_seed(1))
    rows, ref = [], None
    for mode in ("none", "int8", "int4"):
        model = build(dtype)
        float_bytes = sum(m.weight.numel() * m.weight.element_size() for n, m in model.named_modules()
                          if isinstance(m, torch.nn.Linear) and (n.startswith("layers.") or n == "output"))  # fmt: skip
        t0 = time.perf_counter()
        if mode != "none":
            quantize_model(model, QuantSpec(mode))
        quantize_s = time.perf_counter() - t0
        model.fuse_projections()
        run(model, ids[:32])  # warm-up (allocator, kernels' first calls, the int4 CPU repack)
        r = run(model, ids)
        ref = ref or r
        cos = torch.nn.functional.cosine_similarity(r["logits"], ref["logits"], dim=0)
        same = sum(a == b for a, b in zip(r["tokens"], ref["tokens"]))
        rows.append({"mode": mode, "weight_MB": (quantized_bytes(model) if mode != "none" else float_bytes) / 1e6,
                     "quantize_s": quantize_s, "prefill_tok_s": r["prefill_tok_s"], "decode_tok_s": r["decode_tok_s"],
                     "logit_cosine_vs_float": float(cos), "greedy_tokens_equal": f"{same}/{STEPS}"})  # fmt: skip
    print(f"CPU {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, activations {args.dtype}")  # fmt: skip
    print(f"{'weights':8} {'MB':>8} {'quant s':>8} {'prefill tok/s':>14} {'decode tok/s':>13} {'cosine':>8}  greedy =")
    for r in rows:
        print(f"{r['mode']:8} {r['weight_MB']:8.1f} {r['quantize_s']:8.2f} {r['prefill_tok_s']:14.1f} "
              f"{r['decode_tok_s']:13.1f} {r['logit_cosine_vs_float']:8.5f}  {r['greedy_tokens_equal']}")  # fmt: skip
    out = ROOT / "bench" / "results" / f"cpu-{time.strftime('%Y-%m-%d')}-{args.dtype}.json"
    out.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "dtype": args.dtype,
                               "model": "dim 1024, 8 layers, hidden 4096, vocab 32768", "rows": rows}, indent=1))  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
