"""Quantize at load and the quantized cache: hit, miss on a changed checkpoint, rebuild of a broken entry,
an unwritable cache root, and the engine generating with quantized weights."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pixdesk.model import quant_ops
from pixdesk.model.quant import Int4Linear, Int8Linear
from pixdesk.weights.checkpoint import load_checkpoint
from pixdesk.weights.load import read_header
from pixdesk.weights.quantized import CACHE_FILE
from pixdesk.weights.tiny import make_tiny_checkpoint


def _state(model) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


@pytest.fixture()
def ckpt_dir(tmp_path):
    return make_tiny_checkpoint(tmp_path / "model", layout="hf", seed=1)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_second_load_reads_the_cache_and_gets_identical_tensors(ckpt_dir, tmp_path, mode):
    first = load_checkpoint(ckpt_dir, quant=mode, quant_cache=tmp_path / "qc")
    second = load_checkpoint(ckpt_dir, quant=mode, quant_cache=tmp_path / "qc")
    assert first.quant["source"] == "quantized" and second.quant["source"] == "cache"
    assert first.quant["cache"] == second.quant["cache"]
    a, b = _state(first.model), _state(second.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    kind = Int8Linear if mode == "int8" else Int4Linear
    assert isinstance(second.model.layers[1].feed_forward.w2, kind) and isinstance(second.model.output, kind)
    if mode == "int4":  # the cache file holds them in memory order; loaded as views, group-major again
        assert all(quant_ops.is_group_major(m.qweight, m.scales) for m in second.model.modules()
                   if isinstance(m, Int4Linear))  # fmt: skip
        infos = {i.name: i for i in read_header(Path(second.quant["cache"]) / CACHE_FILE)}
        lin = second.model.output
        assert tuple(infos["output.qweight"].shape) == (lin.in_features // lin.group_size, lin.out_features,
                                                        lin.group_size // 2)  # fmt: skip
    meta = json.loads((tmp_path / "qc" / os.path.basename(first.quant["cache"]) / "meta.json").read_text())
    assert meta["quant"]["mode"] == mode and meta["manifest"] == first.manifest_id


def test_float_parts_follow_the_requested_dtype_from_the_cache(ckpt_dir, tmp_path):
    load_checkpoint(ckpt_dir, quant="int8", quant_cache=tmp_path / "qc")
    again = load_checkpoint(ckpt_dir, quant="int8", quant_cache=tmp_path / "qc", dtype=torch.bfloat16)
    assert again.quant["source"] == "cache"
    assert again.model.tok_embeddings.weight.dtype == torch.bfloat16
    assert again.model.layers[0].attention.wq.qweight.dtype == torch.int8


def test_changed_checkpoint_misses_and_rebuilds(ckpt_dir, tmp_path):
    first = load_checkpoint(ckpt_dir, quant="int4", quant_cache=tmp_path / "qc")
    weights = next(ckpt_dir.glob("*.safetensors"))
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, newer file
    second = load_checkpoint(ckpt_dir, quant="int4", quant_cache=tmp_path / "qc")
    assert second.quant["source"] == "quantized" and second.quant["cache"] != first.quant["cache"]
    assert not os.path.exists(first.quant["cache"])  # the stale entry is removed, not left to fill the disk


def test_modes_have_separate_entries(ckpt_dir, tmp_path):
    a = load_checkpoint(ckpt_dir, quant="int8", quant_cache=tmp_path / "qc")
    b = load_checkpoint(ckpt_dir, quant="int4", quant_cache=tmp_path / "qc")
    assert a.quant["cache"] != b.quant["cache"] and b.quant["source"] == "quantized"


@pytest.mark.parametrize("damage", ["truncate", "garbage-header", "missing-file"])
def test_broken_entry_is_rebuilt_not_trusted(ckpt_dir, tmp_path, damage, caplog):
    first = load_checkpoint(ckpt_dir, quant="int8", quant_cache=tmp_path / "qc")
    entry = first.quant["cache"]
    data = os.path.join(entry, "model.safetensors")
    if damage == "truncate":
        os.truncate(data, os.path.getsize(data) // 2)
    elif damage == "garbage-header":
        with open(data, "r+b") as f:
            f.write(b"\xff" * 64)
    else:
        os.remove(data)
    again = load_checkpoint(ckpt_dir, quant="int8", quant_cache=tmp_path / "qc")
    assert again.quant["source"] == "quantized"
    assert "rebuilding" in caplog.text
    third = load_checkpoint(ckpt_dir, quant="int8", quant_cache=tmp_path / "qc")
    assert third.quant["source"] == "cache"
    a, b = _state(first.model), _state(third.model)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unwritable_cache_still_loads(ckpt_dir, tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    ck = load_checkpoint(ckpt_dir, quant="int8", quant_cache=blocker / "qc")
    assert ck.quant["source"] == "quantized" and ck.quant["cache"] is None
    assert "cannot write the quantized cache" in caplog.text


def test_no_half_written_entry_is_left_behind(ckpt_dir, tmp_path, monkeypatch):
    import pixdesk.weights.quantized as qz

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(qz.os, "fsync", boom)
    ck = load_checkpoint(ckpt_dir, quant="int8", quant_cache=tmp_path / "qc")
    assert ck.quant["cache"] is None and list((tmp_path / "qc").iterdir()) == []
    monkeypatch.undo()
    assert load_checkpoint(ckpt_dir, quant="int8", quant_cache=tmp_path / "qc").quant["source"] == "quantized"


@pytest.mark.parametrize("mode,bound", [("int8", 0.999), ("int4", 0.99)])
def test_engine_logits_stay_close_to_float(tiny_dir, tmp_path, mode, bound):
    from pixdesk.engine.cache import KVCache
    from pixdesk.engine.generate import prefill

    ids = torch.tensor([1, 3, *range(100, 160), 4])
    outs = []
    for quant in ("none", mode):
        model = load_checkpoint(tiny_dir, quant=quant, quant_cache=tmp_path / "qc").model.fuse_projections()
        kv = KVCache.for_model(model, 1, 128)
        with torch.inference_mode():
            outs.append(prefill(model, kv, 0, model.tok_embeddings(ids), 0, chunk=16))
    assert float(F.cosine_similarity(outs[0], outs[1], dim=0)) >= bound


def test_cache_root_is_created(ckpt_dir, tmp_path):
    root = tmp_path / "deep" / "cache" / "quantized"
    load_checkpoint(ckpt_dir, quant="int8", quant_cache=root)
    assert len(list(root.iterdir())) == 1
    shutil.rmtree(root)
