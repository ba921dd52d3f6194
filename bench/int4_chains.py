"""What the one-row int4 GEMV benches share (int4_forms, int4_oneshot, int4_streamk, int4_smallloads): the 12B
decoder's shapes, 40 distinct random weights a shape (8 of the LM head), their timing as the decode step runs
them (one after another in a CUDA graph), each form checked against the served kernel's sums, and the table.
The weights keep separate scale and minimum buffers (the layout before session 16's interleaving), so the
`served` column means the same in every file."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import graph_time  # noqa: E402

from pixdesk.model import int4_mma  # noqa: E402
from pixdesk.model.quant import Int4Linear  # noqa: E402

SHAPES = {"gate|up": (28672, 5120), "down": (5120, 14336), "q|k|v": (6144, 5120), "wo": (5120, 4096),
          "LM head": (131072, 5120)}  # fmt: skip


def weights(n: int, k: int) -> tuple[list, torch.Tensor]:
    """Distinct int4 weights (N, K) on the GPU, as many as the step has of the shape (8 of the LM head's
    size, to bound memory), and one bf16 input row."""
    count = 8 if n == 131072 else 40
    lins = [Int4Linear.from_float(torch.randn(n, k, device="cuda") * k**-0.5) for _ in range(count)]
    return lins, torch.randn(1, k, device="cuda", dtype=torch.bfloat16)


def chain_us(call, count: int) -> float:
    """us a call of call(0), ..., call(count - 1) replayed in one CUDA graph."""
    return graph_time(lambda: [call(i) for i in range(count)]) * 1e6 / count


def served(x: torch.Tensor, lin) -> torch.Tensor:
    return int4_mma.int4_gemv_mma(x, lin.qweight, lin.scales, lin.mins)


def served_row(x: torch.Tensor, lins: list) -> tuple[dict, torch.Tensor]:
    """({"served": us a call}, the served kernel's sums for lins[0] as (N,) fp32)."""
    ref = served(x, lins[0]).float().sum(0).reshape(-1)
    return {"served": chain_us(lambda i: served(x, lins[i]), len(lins))}, ref


def checked_us(call, count: int, total, ref: torch.Tensor, tol: float) -> float | str:
    """chain_us of a form whose call(0) turned into (N,) sums by `total` matches `ref` within `tol`
    (relative norm), else what it got wrong."""
    err = ((total(call(0)).float().reshape(-1) - ref).norm() / ref.norm()).item()
    return chain_us(call, count) if err < tol else f"wrong ({err:.2g})"


def print_header(columns: list[str]) -> None:
    print("| linear | served | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 2) + "|")


def print_row(name: str, row: dict) -> None:
    cells = " | ".join(f"{v:.2f}" if isinstance(v, float) else v for v in row.values())
    print(f"| {name} | {cells} |", flush=True)


def save(res: dict, filename: str) -> None:
    out = Path(os.environ.get("OUT", "bench-out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / filename).write_text(json.dumps(res, indent=1))
