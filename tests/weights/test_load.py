"""Loader: both layouts, shard index, strict checks, typed errors naming the file/tensor/field."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pixdesk.errors import InvalidCheckpoint, InvalidConfig, ModelNotFound
from pixdesk.weights.checkpoint import load_checkpoint, manifest, manifest_id
from pixdesk.weights.load import build_model, find_checkpoint
from pixdesk.weights.tiny import TINY_ARGS, write_checkpoint


def _params(model):
    return {n: p.detach() for n, p in model.named_parameters()}


@pytest.mark.parametrize("shards", [1, 3])
def test_hf_layout_loads_the_same_weights(tmp_path, state, shards):
    d = write_checkpoint(tmp_path / "hf", TINY_ARGS, state, layout="hf", shards=shards)
    assert (d / "model.safetensors.index.json").exists() == (shards > 1)
    got = _params(build_model(find_checkpoint(d)))
    assert got.keys() == state.keys()
    for name, t in state.items():
        assert torch.equal(got[name], t), name


def test_both_hf_key_spellings_are_accepted(tmp_path, state):
    d = write_checkpoint(tmp_path / "hf", TINY_ARGS, state, layout="hf")
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    renamed = {}
    for k, t in tensors.items():
        k = k.replace("language_model.model.", "model.language_model.").replace(
            "language_model.lm_head", "lm_head"
        )
        k = k.replace("vision_tower.", "model.vision_tower.", 1) if k.startswith("vision_tower.") else k
        k = "model." + k if k.startswith("multi_modal_projector.") else k
        renamed[k] = t
    save_file(renamed, str(d / "model.safetensors"))
    got = _params(build_model(find_checkpoint(d)))
    assert all(torch.equal(got[n], t) for n, t in state.items())


def test_dtype_and_progress(native):
    seen = []
    model = build_model(
        find_checkpoint(native), dtype=torch.bfloat16, progress=lambda d, t: seen.append((d, t))
    )
    assert model.dtype == torch.bfloat16
    assert seen[-1][0] == seen[-1][1] and len(seen) == len(list(model.parameters()))


def test_meta_device_validates_without_reading(native):
    model = build_model(find_checkpoint(native), device="meta")
    assert model.tok_embeddings.weight.is_meta


def test_manifest_changes_with_the_checkpoint(native, state):
    files = find_checkpoint(native)
    before = manifest_id(manifest(files))
    assert manifest_id(manifest(files)) == before
    state2 = dict(state)
    state2["norm.weight"] = state["norm.weight"] + 1
    save_file(state2, str(native / "consolidated.safetensors"))
    assert manifest_id(manifest(find_checkpoint(native))) != before


def test_load_checkpoint_returns_model_and_tokenizer(native):
    ck = load_checkpoint(native)
    assert ck.tokenizer.n_words == TINY_ARGS.text.vocab_size
    assert ck.files.layout == "native" and len(ck.manifest_id) == 64


# --------------------------------------------------------------------------------------------- bad input


def _rewrite(native, mutate):
    path = native / "consolidated.safetensors"
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    mutate(tensors)
    save_file(tensors, str(path))


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (
            lambda t: t.pop("layers.1.feed_forward.w2.weight"),
            "missing tensor 'layers.1.feed_forward.w2.weight'",
        ),
        (lambda t: t.update(extra=torch.zeros(2)), "unexpected tensor 'extra'"),
        (lambda t: t.update({"layers.0.attention.wq.weight": torch.zeros(3, 3)}), "has shape [3, 3]"),
        (lambda t: t.update({"norm.weight": torch.zeros(48, dtype=torch.int32)}), "dtype I32"),
        (
            lambda t: t.update({"layers.0.attention.wqq.weight": t.pop("layers.0.attention.wq.weight")}),
            "unexpected tensor 'layers.0.attention.wqq.weight'",
        ),
    ],
)
def test_bad_tensors_name_the_tensor(native, mutate, needle):
    _rewrite(native, mutate)
    with pytest.raises(InvalidCheckpoint) as exc:
        build_model(find_checkpoint(native))
    assert needle in exc.value.message
    assert "consolidated.safetensors" in exc.value.message or str(native) in exc.value.message


def test_truncated_file(native):
    path = native / "consolidated.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidCheckpoint) as exc:
        build_model(find_checkpoint(native))
    assert "truncated" in exc.value.message and "consolidated.safetensors" in exc.value.message


def test_garbage_file(native):
    (native / "consolidated.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(InvalidCheckpoint, match="not a valid safetensors"):
        build_model(find_checkpoint(native))


def test_pickles_are_never_loaded(tmp_path, native):
    d = tmp_path / "pickled"
    d.mkdir()
    shutil.copy(native / "params.json", d)
    torch.save({"x": torch.zeros(1)}, d / "consolidated.pth")
    with pytest.raises(InvalidCheckpoint, match="pickled weights are never loaded"):
        find_checkpoint(d)


def test_missing_dir_and_no_config(tmp_path):
    with pytest.raises(ModelNotFound):
        find_checkpoint(tmp_path / "nope")
    with pytest.raises(InvalidCheckpoint, match="neither params.json"):
        find_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "edit, param",
    [
        (lambda p: p.update(frobnicate=1), "frobnicate"),
        (lambda p: p.update(sliding_window=4096), "sliding_window"),
        (lambda p: p["vision_encoder"].update(mm_projector_id="patch_merge"), "mm_projector_id"),
        (lambda p: p["vision_encoder"].update(spatial_merge_size=2), "spatial_merge_size"),
        (lambda p: p["vision_encoder"].update(colour="blue"), "colour"),
        (lambda p: p.pop("n_heads"), "n_heads"),
    ],
)
def test_bad_params_json_names_the_key(native, edit, param):
    params = json.loads((native / "params.json").read_text())
    edit(params)
    (native / "params.json").write_text(json.dumps(params))
    with pytest.raises(InvalidConfig) as exc:
        build_model(find_checkpoint(native))
    assert exc.value.param == param and param in exc.value.message


@pytest.mark.parametrize(
    "edit, param",
    [
        (lambda c: c["vision_config"].update(hidden_act="gelu"), "vision_config.hidden_act"),
        (lambda c: c["vision_config"].pop("hidden_act"), "vision_config.hidden_act"),
        (lambda c: c["text_config"].update(sliding_window=4096), "sliding_window"),
        (lambda c: c.update(vision_feature_layer=-2), "vision_feature_layer"),
        (lambda c: c.update(vision_feature_select_strategy="default"), "vision_feature_select_strategy"),
        (
            lambda c: c["text_config"].update(rope_parameters={"rope_type": "yarn", "factor": 4}),
            "rope_parameters.rope_type",
        ),
    ],
)
def test_bad_hf_config_names_the_key(tmp_path, state, edit, param):
    d = write_checkpoint(tmp_path / "hf", TINY_ARGS, state, layout="hf")
    cfg = json.loads((d / "config.json").read_text())
    edit(cfg)
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InvalidConfig) as exc:
        build_model(find_checkpoint(d))
    assert exc.value.param == param


def test_hf_bookkeeping_keys_are_ignored(tmp_path, state):
    d = write_checkpoint(tmp_path / "hf", TINY_ARGS, state, layout="hf")
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(initializer_range=0.02, use_cache=True, transformers_version="4.45.0", image_seq_length=1)
    cfg["text_config"].update(initializer_range=0.02, use_cache=True, attention_dropout=0.0)
    (d / "config.json").write_text(json.dumps(cfg))
    build_model(find_checkpoint(d), device="meta")
