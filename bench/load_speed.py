"""Checkpoint load speed: the single-thread reader (`iter_tensors` + `.to`) against the threaded streamer
(`build_model`, weights/stream.py), from a warm page cache.

    PYTHONPATH=. .venv/bin/python bench/load_speed.py [--device cpu|cuda] [--threads 1,2,4,8] [--shape small|12b]
        [--dtypes bf16,fp32] [--repeat N] [--keep DIR]

Writes a random bf16 checkpoint shaped like a small Pixtral (`small`: dim 2048, 8 layers, hidden 5632, vocab
32,768, a 4-layer vision tower, 1.14 GB) or like Pixtral-12B (`12b`, 25.4 GB) to a temp dir (or DIR, reused
when it holds one), reads it once so the page cache is warm, then times each loader (best of --repeat) and
prints a table of GB/s. The bytes are tiled from a 256 MiB random pool: a load copies bytes, whatever they
hold, and a 25 GB checkpoint then needs no 25 GB of host memory to write.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pixdesk.model.args import ModelArgs, TextArgs, VisionArgs  # noqa: E402
from pixdesk.model.pixtral import Pixtral  # noqa: E402
from pixdesk.weights import stream  # noqa: E402
from pixdesk.weights.load import _assign, build_model, find_checkpoint, iter_tensors, plan_tensors, read_args  # noqa: E402
from pixdesk.weights.tiny import params_json  # noqa: E402

VISION = dict(hidden_size=1024, num_channels=3, image_size=1024, patch_size=16, intermediate_size=4096,
              num_attention_heads=16)  # fmt: skip
SHAPES = {
    "small": ModelArgs(
        text=TextArgs(dim=2048, n_layers=8, head_dim=128, hidden_dim=5632, n_heads=16, n_kv_heads=4, vocab_size=32768),
        vision=VisionArgs(**VISION, num_hidden_layers=4),
    ),
    "12b": ModelArgs(
        text=TextArgs(dim=5120, n_layers=40, head_dim=128, hidden_dim=14336, n_heads=32, n_kv_heads=8, vocab_size=131072),
        vision=VisionArgs(**VISION, num_hidden_layers=24),
    ),
}  # fmt: skip
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def write_random(out: Path, args: ModelArgs) -> Path:
    """A native-layout bf16 checkpoint written tensor by tensor (safetensors layout: header, then data)."""
    if (out / "consolidated.safetensors").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        shapes = {n: list(p.shape) for n, p in Pixtral(args).named_parameters()}
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = 2 * math.prod(shape)
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    pool = memoryview(os.urandom(256 << 20))
    with open(out / "consolidated.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for pos in range(0, offset, len(pool)):
            f.write(pool[: min(len(pool), offset - pos)])
    (out / "params.json").write_text(json.dumps(params_json(args)))
    return out


def warm(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(64 << 20):
            pass


def old_load(model_dir: Path, device: str, dtype: torch.dtype):
    """build_model before the streamer: one thread, one tensor at a time, pageable `.to(device)`."""
    files = find_checkpoint(model_dir)
    args = read_args(files)
    with torch.device("meta"):
        model = Pixtral(args)
    for p, t in iter_tensors(plan_tensors(files, model, args)):
        _assign(model, p.target, t.to(device=device, dtype=dtype))
    return model


def new_load(model_dir: Path, device: str, dtype: torch.dtype, threads: int):
    stream.THREADS = threads  # build_model takes the module's default at call time
    return build_model(find_checkpoint(model_dir), device=device, dtype=dtype)


def timed(fn, repeat: int, device: str) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        model = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
        del model
    return best


def loaders(a: argparse.Namespace, d: Path, dtype: torch.dtype) -> list:
    rows = [] if a.skip_old else [("old: 1 thread + .to", lambda: old_load(d, a.device, dtype))]
    for n in map(int, a.threads.split(",")):
        rows.append((f"new: {n} reader(s)", lambda n=n: new_load(d, a.device, dtype, n)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", default="1,2,4")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small")
    ap.add_argument("--dtypes", default="bf16,fp32")
    ap.add_argument("--skip-old", action="store_true", help="time only the streamer")
    ap.add_argument("--chunk-mib", type=int, default=None, help="the streamer's chunk (staging buffer) size")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path, default=None, help="checkpoint folder to write, or to read if it holds one")
    a = ap.parse_args()
    if a.chunk_mib:
        stream.CHUNK_BYTES = a.chunk_mib << 20
    if a.device.startswith("cuda"):
        torch.zeros(1, device=a.device)  # the CUDA context is not part of a load
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        reuse = a.keep and (a.keep / "consolidated.safetensors").exists()  # e.g. the ready stage's checkpoint
        d = a.keep if reuse else write_random(a.keep or Path(tmp) / a.shape, SHAPES[a.shape])
        weights = d / "consolidated.safetensors"
        gb = weights.stat().st_size / 1e9
        warm(weights)
        print(f"{gb:.2f} GB bf16 checkpoint ({a.shape}; written and warmed in {time.perf_counter() - t0:.0f} s), "
              f"device {a.device}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
              f"chunk {stream.CHUNK_BYTES >> 20} MiB")  # fmt: skip
        print("| loader | to dtype | seconds | GB/s |")
        print("|---|---|---|---|")
        for name in a.dtypes.split(","):
            for label, fn in loaders(a, d, DTYPES[name]):
                s = timed(fn, a.repeat, a.device)
                print(f"| {label} | {name} | {s:.2f} | {gb / s:.1f} |", flush=True)


if __name__ == "__main__":
    main()
