"""Find a checkpoint's layout, read its config, and stream its safetensors into a model built on meta.

Tensors are read by several threads straight into their final CPU tensors, or through a few pinned staging
buffers into their device tensors (weights/stream.py), so loading to a GPU never holds a second host copy
of the checkpoint. Every name, shape and dtype is checked (strict) before any data is read; pickles are
never loaded.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pixdesk.errors import InvalidCheckpoint, InvalidConfig, ModelNotFound
from pixdesk.model.args import ModelArgs, from_hf_config, from_params_json
from pixdesk.model.pixtral import Pixtral
from pixdesk.weights.layouts import canonical_hf, hf_name_table, permute_from_hf, qk_heads
from pixdesk.weights.stream import stream_bytes

_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}
_STORED_DTYPES = {**_DTYPES, "I8": torch.int8, "U8": torch.uint8}  # the quantized cache adds integers
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
Progress = Callable[[int, int], None]  # (bytes done, bytes total)


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    name: str  # as stored in the file
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype string
    nbytes: int
    offset: int  # absolute byte offset of the data in the file


@dataclass(frozen=True)
class CheckpointFiles:
    root: Path
    layout: str  # "native" | "hf"
    config_file: Path
    weight_files: tuple[Path, ...]


def find_checkpoint(model_dir: str | Path) -> CheckpointFiles:
    root = Path(model_dir).expanduser()
    if not root.is_dir():
        raise ModelNotFound(f"model directory {root} does not exist; pass --model DIR or set model.path")
    if (root / "params.json").is_file():
        layout, config, pattern = "native", root / "params.json", "consolidated*.safetensors"
    elif (root / "config.json").is_file():
        layout, config, pattern = "hf", root / "config.json", "model*.safetensors"
    else:
        raise InvalidCheckpoint(
            f"{root}: neither params.json (Mistral layout) nor config.json (HF layout) found"
        )
    files = _hf_index_files(root) if layout == "hf" else None
    files = files or tuple(sorted(root.glob(pattern)))
    if not files:
        pickles = [p.name for p in root.iterdir() if p.suffix in _PICKLE_SUFFIXES]
        hint = (
            f" (found {pickles[0]}: pickled weights are never loaded; convert them to safetensors)"
            if pickles
            else ""
        )
        raise InvalidCheckpoint(f"{root}: no {pattern} weight files{hint}")
    return CheckpointFiles(root, layout, config, files)


def _hf_index_files(root: Path) -> tuple[Path, ...] | None:
    index = root / "model.safetensors.index.json"
    if not index.is_file():
        return None
    data = _read_json(index)
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict):
        raise InvalidCheckpoint(f"{index}: missing 'weight_map'")
    files = tuple(root / f for f in sorted(set(weight_map.values())))
    for f in files:
        if not f.is_file():
            raise InvalidCheckpoint(f"{index}: shard {f.name} is listed but missing")
    return files


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidCheckpoint(f"{path}: cannot read JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidCheckpoint(f"{path}: expected a JSON object")
    return data


def read_args(files: CheckpointFiles) -> ModelArgs:
    cfg = _read_json(files.config_file)
    try:
        if files.layout == "native":
            return from_params_json(cfg, where=str(files.config_file))
        return from_hf_config(cfg, where=str(files.config_file))
    except InvalidConfig:
        raise
    except (TypeError, ValueError, AttributeError) as exc:
        raise InvalidConfig(f"{files.config_file}: malformed value ({exc})") from None


def read_header(path: Path) -> list[TensorInfo]:
    """Parse a safetensors header without touching tensor data; checks the file covers every tensor."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(size - 8, 100 * 2**20):
                raise ValueError(f"header length {n} exceeds the file")
            header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as exc:
        raise InvalidCheckpoint(f"{path}: not a valid safetensors file ({exc})") from None
    infos = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = meta["data_offsets"]
            info = TensorInfo(path, name, tuple(meta["shape"]), meta["dtype"], end - begin, 8 + n + begin)
        except (KeyError, TypeError, ValueError):
            raise InvalidCheckpoint(f"{path}: malformed header entry for tensor {name!r}") from None
        if 8 + n + end > size:
            raise InvalidCheckpoint(f"{path}: truncated file: tensor {name!r} ends past the end of the file")
        infos.append(info)
    return infos


@dataclass(frozen=True)
class _Planned:
    info: TensorInfo
    target: str  # native parameter name
    permute_heads: int | None


def plan_tensors(files: CheckpointFiles, model: nn.Module, args: ModelArgs) -> list[_Planned]:
    """Map every stored tensor to a model parameter; any missing/extra/misshaped tensor is an error."""
    expected = {n: tuple(p.shape) for n, p in model.named_parameters()}
    rename = hf_name_table(list(expected)) if files.layout == "hf" else None
    planned: dict[str, _Planned] = {}
    for path in files.weight_files:
        for info in read_header(path):
            target = info.name if rename is None else rename.get(canonical_hf(info.name))
            if target not in expected:
                raise InvalidCheckpoint(f"{path}: unexpected tensor {info.name!r} (not part of this model)")
            if target in planned:
                raise InvalidCheckpoint(f"{path}: tensor {info.name!r} appears twice in the checkpoint")
            if info.shape != expected[target]:
                raise InvalidCheckpoint(
                    f"{path}: tensor {info.name!r} has shape {list(info.shape)}, the config implies "
                    f"{list(expected[target])}"
                )
            if info.dtype not in _DTYPES:
                raise InvalidCheckpoint(
                    f"{path}: tensor {info.name!r} has dtype {info.dtype}; expected a float"
                )
            if info.nbytes != math.prod(info.shape) * _DTYPES[info.dtype].itemsize:
                raise InvalidCheckpoint(f"{path}: tensor {info.name!r}: byte size disagrees with its shape")
            heads = qk_heads(target, args) if files.layout == "hf" else None
            planned[target] = _Planned(info, target, heads)
    missing = [n for n in expected if n not in planned]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise InvalidCheckpoint(f"{files.root}: missing tensor {missing[0]!r}{more}")
    return list(planned.values())


def stored_dtype(info: TensorInfo) -> torch.dtype:
    """The torch dtype of a stored tensor; its byte size must match its shape."""
    dtype = _STORED_DTYPES.get(info.dtype)
    if dtype is None or info.nbytes != math.prod(info.shape) * dtype.itemsize:
        raise InvalidCheckpoint(f"{info.file}: tensor {info.name!r}: bad dtype {info.dtype} or byte size")
    return dtype


def stream_tensors(
    infos: list[TensorInfo], device: str | torch.device, **opts
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (index into infos, tensor of its stored dtype and shape), in any order, on `device` when it is
    a CUDA device, else on the CPU. Every dtype and size is checked before the first read."""
    dtypes = [stored_dtype(i) for i in infos]
    with closing(stream_bytes(infos, device, **opts)) as raws:  # closing: stop the readers now, not at GC
        for k, raw in raws:
            yield k, raw.view(dtypes[k]).reshape(infos[k].shape)


def iter_planned(
    plan: list[_Planned], device: str | torch.device, **opts
) -> Iterator[tuple[_Planned, torch.Tensor]]:
    """Yield (plan entry, tensor in native convention and its stored dtype), in any order, on `device` when
    it is CUDA (the HF q/k permutation then runs there), else on the CPU."""
    with closing(stream_tensors([p.info for p in plan], device, **opts)) as tensors:
        for k, t in tensors:
            p = plan[k]
            yield p, (permute_from_hf(t, p.permute_heads) if p.permute_heads else t)


def iter_tensors(plan: list[_Planned]) -> Iterator[tuple[_Planned, torch.Tensor]]:
    """Yield (plan entry, CPU tensor in native convention), one tensor at a time, file by file, on this
    thread: the plain reader for a single tensor (`read_tensor`) and the reference the streamer is tested
    against.

    Plain positional reads instead of one mmap of the whole file: a 25 GB mapping is refused outright on a
    machine with less memory than that (heuristic overcommit), while reading tensor by tensor needs only
    the largest tensor's size in host memory.
    """
    by_file: dict[Path, list[_Planned]] = {}
    for p in plan:
        by_file.setdefault(p.info.file, []).append(p)
    for path, entries in by_file.items():
        try:
            with path.open("rb") as f:
                for p in sorted(entries, key=lambda e: e.info.offset):
                    t = read_tensor_data(f, p.info)
                    yield p, (permute_from_hf(t, p.permute_heads) if p.permute_heads else t)
        except OSError as exc:
            raise InvalidCheckpoint(f"{path}: cannot read tensor data ({exc})") from None


def read_tensor_data(f, info: TensorInfo) -> torch.Tensor:
    """One tensor's bytes from an open file, as a CPU tensor of its stored dtype and shape."""
    dtype = stored_dtype(info)
    buf = torch.empty(info.nbytes, dtype=torch.uint8)
    f.seek(info.offset)
    if f.readinto(memoryview(buf.numpy())) != info.nbytes:
        raise InvalidCheckpoint(f"{info.file}: truncated while reading tensor {info.name!r}")
    return buf.view(dtype).reshape(info.shape)


def _assign(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    setattr(module, leaf, nn.Parameter(value, requires_grad=False))


def build_model(
    files: CheckpointFiles,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> Pixtral:
    """Build the model on meta, then stream each tensor in. `device="meta"` validates without reading data.

    A CUDA target gets each tensor on the device in its stored dtype; the conversion to `dtype` runs there.
    """
    args = read_args(files)
    with torch.device("meta"):
        model = Pixtral(args)
    plan = plan_tensors(files, model, args)
    total, done = sum(p.info.nbytes for p in plan), 0
    if torch.device(device).type == "meta":
        for p in plan:
            _assign(model, p.target, torch.empty(p.info.shape, dtype=dtype, device="meta"))
        return model.eval()
    with closing(iter_planned(plan, device)) as tensors:
        for p, tensor in tensors:
            _assign(model, p.target, tensor.to(device=device, dtype=dtype))
            done += p.info.nbytes
            if progress:
                progress(done, total)
    return model.eval()


def read_tensor(model_dir: str | Path, native_name: str) -> torch.Tensor:
    """One tensor by native name, in native convention (for checks and tools)."""
    files = find_checkpoint(model_dir)
    args = read_args(files)
    with torch.device("meta"):
        model = Pixtral(args)
    plan = [p for p in plan_tensors(files, model, args) if p.target == native_name]
    if not plan:
        raise KeyError(native_name)
    return next(iter_tensors(plan))[1]
