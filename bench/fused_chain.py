"""The int4 one-row GEMVs with their epilogues (model/int4_fused.py) against the kernels they replace, timed
the way the decode step runs them: 40 distinct weights of a shape one after another in a CUDA graph (PDL
where the GPU has it), at the pinned configs. us a call:

- gate|up (28672 x 5120): the mma GEMV's partials alone, + the silu_mul kernel (the unfused step), the fused
  `gated` at its own K splits, and at 1 and 2 splits;
- q|k|v (6144 x 5120): the partials alone, + rope_cache_write, the fused `qkv_rope` at its own splits, 4, 1.

    PYTHONPATH=. python3 bench/fused_chain.py     # prints a table, writes $OUT/fused_chain.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import graph_time  # noqa: E402

from pixdesk.engine import decode_attention  # noqa: E402,F401  (registers rope_cache_write)
from pixdesk.model import int4_fused, int4_mma  # noqa: E402
from pixdesk.model.quant import Int4Linear  # noqa: E402
from pixdesk.model.silu_mul import silu_mul_partials  # noqa: E402

LAYERS = 40


def weights(n: int, k: int) -> list[Int4Linear]:
    return [Int4Linear.from_float(torch.randn(n, k, device="cuda") * k**-0.5) for _ in range(LAYERS)]


def gate_up_variants(x, lins) -> dict:
    def gemv(m):
        return int4_mma.int4_gemv_mma(x, m.qweight, m.scales, m.mins)

    def fused(split):
        return lambda m: int4_fused.gated(x, m.qweight, m.scales, m.mins, split=split)

    return {"partials only": gemv, "partials + silu_mul": lambda m: silu_mul_partials(gemv(m), x.dtype),
            "gated": fused(None), "gated 1 split": fused(1), "gated 2 splits": fused(2)}  # fmt: skip


def qkv_variants(x, lins) -> dict:
    keys, values = torch.zeros(2, 1, 4352, 8, 128, dtype=torch.bfloat16, device="cuda").unbind(0)
    cos, sin = torch.rand(2, 1, 64, device="cuda").unbind(0)
    pos = torch.tensor([4200], device="cuda")

    def gemv(m):
        return int4_mma.int4_gemv_mma(x, m.qweight, m.scales, m.mins)

    def unfused(m):
        return torch.ops.pixdesk.rope_cache_write(gemv(m), cos, sin, keys, values, pos, 32)

    def fused(split):
        return lambda m: int4_fused.qkv_rope(x, m.qweight, m.scales, m.mins, cos, sin, keys, values, pos, 32,
                                             split=split)  # fmt: skip

    return {"partials only": gemv, "partials + rope_cache_write": unfused, "qkv_rope": fused(None),
            "qkv_rope 4 splits": fused(4), "qkv_rope 1 split": fused(1)}  # fmt: skip


def main() -> None:
    res = {}
    for name, (n, k), variants in (
        ("gate|up", (28672, 5120), gate_up_variants),
        ("q|k|v", (6144, 5120), qkv_variants),
    ):
        lins = weights(n, k)
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        for label, fn in variants(x, lins).items():
            us = graph_time(lambda fn=fn, lins=lins: [fn(m) for m in lins]) * 1e6 / LAYERS
            res[f"{name} {label}"] = us
            print(f"| {name} | {label} | {us:.2f} |", flush=True)
        lins.clear()
        torch.cuda.empty_cache()
    out = Path(os.environ.get("OUT", "bench-out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "fused_chain.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
