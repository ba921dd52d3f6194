"""Quantized models: quantize at load from a float checkpoint, keep the result in the quantized cache.

The cache entry lives in `<cache root>/<key>/` (`model.safetensors` + `meta.json`); the key is a hash of
the checkpoint's manifest (file names, sizes, mtimes and tensor headers), the quantization format and the
pixdesk version. So a changed checkpoint, format or version misses and the cache is rebuilt; a hit loads the
quantized tensors directly (a fraction of the float bytes, no quantization work).

Quantizing streams the checkpoint (weights/stream.py: reader threads, pinned staging for a CUDA target): a
decoder linear's float weight lands on the device in its stored dtype, is quantized there and replaced, so
the peak is the quantized model plus the float weights in flight (the streamer's `max_ahead`, about 1 GiB;
a 12 GiB card never holds the 25 GB float model). A cache hit streams the same way.

The entry is written to a temporary folder and renamed into place, so a crash never leaves a half-written
entry that a later start would trust.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import time
from contextlib import closing
from pathlib import Path

import torch
from torch import nn

import pixdesk
from pixdesk.errors import InvalidCheckpoint, InvalidConfig
from pixdesk.model.pixtral import Pixtral
from pixdesk.model.quant import (
    Int4Linear,
    QuantSpec,
    decoder_input_sizes,
    decoder_linear_names,
    empty_linear,
    quantize_linear,
    set_module,
)
from pixdesk.weights.load import (
    CheckpointFiles,
    Progress,
    TensorInfo,
    _assign,
    iter_planned,
    plan_tensors,
    read_args,
    read_header,
    stored_dtype,
    stream_tensors,
)

log = logging.getLogger("pixdesk.weights")
ST_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.int8: "I8",
             torch.uint8: "U8"}  # fmt: skip
CACHE_FILE = "model.safetensors"


def cache_key(manifest_id: str, spec: QuantSpec) -> str:
    parts = {"manifest": manifest_id, "quant": spec.describe(), "pixdesk": pixdesk.__version__}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def load_quantized(
    files: CheckpointFiles,
    manifest_id: str,
    spec: QuantSpec,
    *,
    dtype: torch.dtype,
    device: str | torch.device,
    cache_root: Path | None,
    progress: Progress | None = None,
) -> tuple[Pixtral, dict]:
    """The quantized model and a report: {"source": "cache" | "quantized", "seconds", "cache": path}."""
    with torch.device("meta"):
        sizes = decoder_input_sizes(Pixtral(read_args(files)))
    try:
        spec = spec.for_inputs(sizes)
    except ValueError as exc:
        message = f"model.quant = {spec.mode!r}: {exc}; use int8 or none"
        raise InvalidConfig(message, param="model.quant") from None
    entry = Path(cache_root) / cache_key(manifest_id, spec) if cache_root else None
    t0 = time.perf_counter()
    if entry is not None and (entry / "meta.json").is_file():
        try:
            model = _load_entry(files, entry, spec, dtype, device, progress)
            return model, {"source": "cache", "seconds": time.perf_counter() - t0, "cache": str(entry)}
        except (InvalidCheckpoint, OSError) as exc:
            log.warning("quantized cache %s is unreadable (%s); rebuilding it", entry, exc)
            shutil.rmtree(entry, ignore_errors=True)
    model = quantize_from_checkpoint(files, spec, dtype=dtype, device=device, progress=progress)
    report = {"source": "quantized", "seconds": time.perf_counter() - t0, "cache": None}
    if entry is not None:
        meta = {"key": entry.name, "manifest": manifest_id, "quant": spec.describe(),
                "pixdesk": pixdesk.__version__, "checkpoint": str(files.root)}  # fmt: skip
        try:
            prune_stale(entry.parent, str(files.root), manifest_id)
            write_entry(model, entry, meta)
            report["cache"] = str(entry)
        except OSError as exc:  # a full or read-only disk costs the next start a re-quantization, no more
            log.warning("cannot write the quantized cache %s (%s); next start quantizes again", entry, exc)
    return model, report


def prune_stale(cache_root: Path, checkpoint: str, manifest_id: str) -> None:
    """Delete entries of this checkpoint folder made from an older manifest (a 13 GB file each for 12B)."""
    if not cache_root.is_dir():
        return
    for meta_file in cache_root.glob("*/meta.json"):
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("checkpoint") == checkpoint and meta.get("manifest") != manifest_id:
            log.info("removing stale quantized cache %s (its checkpoint changed)", meta_file.parent)
            shutil.rmtree(meta_file.parent, ignore_errors=True)


def _empty_quantized(files: CheckpointFiles, spec: QuantSpec) -> Pixtral:
    """The model on meta with every decoder linear already swapped for an empty quantized one."""
    with torch.device("meta"):
        model = Pixtral(read_args(files))
    for name in decoder_linear_names(model):
        lin = model.get_submodule(name)
        set_module(model, name, empty_linear(lin.in_features, lin.out_features, spec))
    return model


def quantize_from_checkpoint(
    files: CheckpointFiles, spec: QuantSpec, *, dtype, device, progress: Progress | None = None
) -> Pixtral:
    """Stream the float checkpoint; decoder linears are quantized on `device` as they arrive."""
    args = read_args(files)
    with torch.device("meta"):
        model = Pixtral(args)
    linears = {f"{n}.weight": n for n in decoder_linear_names(model)}
    plan = plan_tensors(files, model, args)
    total, done = sum(p.info.nbytes for p in plan), 0
    with closing(iter_planned(plan, device)) as tensors:  # an error here stops the readers at once
        for p, tensor in tensors:
            if p.target in linears:
                w = tensor.to(device=device)
                set_module(model, linears[p.target], quantize_linear(w, spec))
                del w
            else:
                _assign(model, p.target, tensor.to(device=device, dtype=dtype))
            done += p.info.nbytes
            if progress:
                progress(done, total)
    return model.eval()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    state = dict(model.named_parameters())
    state.update(_stored_buffers(model))
    return state


def _stored_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The quantized buffers as the cache file holds them: int4 ones in their memory order
    (Int4Linear.stored), so writing them copies nothing and loading them needs no second device copy."""
    out = {}
    for module_name, module in model.named_modules():
        for leaf, t in module.named_buffers(recurse=False):
            name = f"{module_name}.{leaf}" if module_name else leaf
            out[name] = Int4Linear.stored(t) if isinstance(module, Int4Linear) else t
    return out


def write_entry(model: nn.Module, entry: Path, meta: dict) -> None:
    """Every parameter and buffer of the (unfused) model in one safetensors file, written tensor by tensor."""
    tmp = entry.with_name(f"{entry.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write_files(model, tmp, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(entry, ignore_errors=True)
    tmp.rename(entry)


def _write_files(model: nn.Module, tmp: Path, meta: dict) -> None:
    state = _state(model)
    header, offset = {}, 0
    for name, t in state.items():
        n = t.numel() * t.element_size()
        header[name] = {
            "dtype": ST_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(tmp / CACHE_FILE, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for t in state.values():
            f.write(memoryview(t.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy()))
        f.flush()
        os.fsync(f.fileno())
    (tmp / "meta.json").write_text(json.dumps({**meta, "bytes": offset}, indent=1))


def _load_entry(files, entry: Path, spec: QuantSpec, dtype, device, progress: Progress | None) -> Pixtral:
    model = _empty_quantized(files, spec)
    floats = dict(model.named_parameters())  # vision, norms, embeddings: follow the requested dtype
    quantized = _stored_buffers(model)  # int8/uint8 weights, scales, minimums: exactly as stored
    infos = read_header(entry / CACHE_FILE)
    _check_entry(entry, infos, floats, quantized)
    total, done = sum(i.nbytes for i in infos), 0
    with closing(stream_tensors(infos, device)) as tensors:
        for k, t in tensors:
            name = infos[k].name
            if name in floats:
                _assign(model, name, t.to(device=device, dtype=dtype))
            else:
                _put_buffer(model, name, t.to(device=device))
            done += infos[k].nbytes
            if progress:
                progress(done, total)
    return model.eval()


def _check_entry(entry: Path, infos: list[TensorInfo], floats: dict, quantized: dict) -> None:
    """Names, shapes and dtypes of the cache file against the empty quantized model, before any read."""
    names = {i.name for i in infos}
    if names != set(floats) | set(quantized) or len(names) != len(infos):
        odd = sorted(names ^ (set(floats) | set(quantized))) or ["(a duplicate)"]
        raise InvalidCheckpoint(f"{entry}: tensors differ from the model ({odd[0]!r})")
    for info in infos:
        want = floats.get(info.name, quantized.get(info.name))
        if tuple(info.shape) != tuple(want.shape):
            raise InvalidCheckpoint(f"{entry}: tensor {info.name!r} has shape {list(info.shape)}")
        if info.name in quantized and stored_dtype(info) != want.dtype:
            raise InvalidCheckpoint(f"{entry}: tensor {info.name!r} has dtype {info.dtype}")


def _put_buffer(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    if isinstance(module, Int4Linear):
        module.put_buffer(leaf, value)  # stored in memory order: a group-major view, no copy
    else:
        module._buffers[leaf] = value
