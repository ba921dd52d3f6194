"""A loaded checkpoint (model + tokenizer) and the manifest that identifies it for caches."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from pixdesk.model.pixtral import Pixtral
from pixdesk.tokenizer.tekken import Tekkenizer, load_tokenizer
from pixdesk.weights.load import CheckpointFiles, Progress, build_model, find_checkpoint, read_header

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Checkpoint:
    model: Pixtral
    tokenizer: Tekkenizer
    files: CheckpointFiles
    manifest: dict
    quant: dict | None = None  # quantized: {"mode", "source": "cache" | "quantized", "seconds", "cache"}

    @property
    def manifest_id(self) -> str:
        return manifest_id(self.manifest)


def manifest(files: CheckpointFiles) -> dict:
    """Names, shapes, dtypes, sizes and mtimes of every file and tensor: changes when the checkpoint does."""
    entries = []
    for path in (files.config_file, *files.weight_files):
        st = path.stat()
        entry = {"file": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if path.suffix == ".safetensors":
            entry["tensors"] = sorted([i.name, list(i.shape), i.dtype] for i in read_header(path))
        entries.append(entry)
    return {"layout": files.layout, "files": entries}


def manifest_id(m: dict) -> str:
    return hashlib.sha256(json.dumps(m, sort_keys=True).encode()).hexdigest()


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if not dtype:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


def load_checkpoint(
    model_dir: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    quant: str = "none",
    quant_cache: Path | None = None,
) -> Checkpoint:
    """Load a checkpoint; with `quant` int8/int4 the decoder linears are quantized (or read from the
    quantized cache under `quant_cache`, see weights/quantized.py)."""
    files = find_checkpoint(model_dir)
    man = manifest(files)
    report = None
    if quant == "none":
        model = build_model(files, dtype=dtype, device=device, progress=progress)
    else:
        from pixdesk.model.quant import QuantSpec
        from pixdesk.weights.quantized import load_quantized

        model, report = load_quantized(files, manifest_id(man), QuantSpec(quant), dtype=dtype, device=device,
                                       cache_root=quant_cache, progress=progress)  # fmt: skip
        report = {"mode": quant, **report}
    tokenizer = load_tokenizer(files.root, vocab_size=model.args.text.vocab_size)
    return Checkpoint(model, tokenizer, files, man, report)
