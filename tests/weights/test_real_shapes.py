"""A real-shaped Pixtral-12B checkpoint: verbatim configs + sparse full-size bf16 safetensors (holes).

The loader validates every name and shape on the meta device and streams a few tensors from the files.
"""

from __future__ import annotations

import json
import struct

import pytest
import torch

from pixdesk.weights.layouts import native_to_hf
from pixdesk.weights.load import build_model, find_checkpoint, read_tensor

PARAMS_JSON = {  # mistralai/Pixtral-12B-2409 params.json (PIXTRAL.md §1.1)
    "dim": 5120,
    "n_layers": 40,
    "head_dim": 128,
    "hidden_dim": 14336,
    "n_heads": 32,
    "n_kv_heads": 8,
    "rope_theta": 1000000000.0,
    "norm_eps": 1e-05,
    "vocab_size": 131072,
    "vision_encoder": {
        "hidden_size": 1024,
        "num_channels": 3,
        "image_size": 1024,
        "patch_size": 16,
        "rope_theta": 10000.0,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "image_token_id": 10,
    },
}
CONFIG_JSON = {  # mistral-community/pixtral-12b config.json (PIXTRAL.md §1.2)
    "architectures": ["LlavaForConditionalGeneration"],
    "ignore_index": -100,
    "image_seq_length": 1,
    "image_token_index": 10,
    "model_type": "llava",
    "projector_hidden_act": "gelu",
    "text_config": {
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": 5120,
        "intermediate_size": 14336,
        "is_composition": True,
        "max_position_embeddings": 1024000,
        "model_type": "mistral",
        "num_hidden_layers": 40,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05,
        "rope_theta": 1000000000.0,
        "sliding_window": None,
        "vocab_size": 131072,
    },
    "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0",
    "vision_config": {
        "head_dim": 64,
        "hidden_act": "silu",
        "image_size": 1024,
        "model_type": "pixtral",
        "patch_size": 16,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    },
    "vision_feature_layer": -1,
    "vision_feature_select_strategy": "full",
}


def real_shapes() -> dict[str, tuple[int, ...]]:
    s = {"tok_embeddings.weight": (131072, 5120), "norm.weight": (5120,), "output.weight": (131072, 5120)}
    for n in range(40):
        p = f"layers.{n}."
        s.update({
            p + "attention_norm.weight": (5120,), p + "ffn_norm.weight": (5120,),
            p + "attention.wq.weight": (4096, 5120), p + "attention.wk.weight": (1024, 5120),
            p + "attention.wv.weight": (1024, 5120), p + "attention.wo.weight": (5120, 4096),
            p + "feed_forward.w1.weight": (14336, 5120), p + "feed_forward.w3.weight": (14336, 5120),
            p + "feed_forward.w2.weight": (5120, 14336),
        })  # fmt: skip
    s["vision_encoder.patch_conv.weight"] = (1024, 3, 16, 16)
    s["vision_encoder.ln_pre.weight"] = (1024,)
    for m in range(24):
        p = f"vision_encoder.transformer.layers.{m}."
        s.update({p + f"attention.w{x}.weight": (1024, 1024) for x in "qkvo"})
        s.update({
            p + "attention_norm.weight": (1024,), p + "ffn_norm.weight": (1024,),
            p + "feed_forward.w1.weight": (4096, 1024), p + "feed_forward.w3.weight": (4096, 1024),
            p + "feed_forward.w2.weight": (1024, 4096),
        })  # fmt: skip
    s.update({
        "vision_language_adapter.w_in.weight": (5120, 1024), "vision_language_adapter.w_in.bias": (5120,),
        "vision_language_adapter.w_out.weight": (5120, 5120), "vision_language_adapter.w_out.bias": (5120,),
    })  # fmt: skip
    return s


def write_sparse_safetensors(path, shapes: dict[str, tuple[int, ...]], fill: dict[str, bytes] | None = None):
    """Header with real offsets, then the file extended to full size without writing data (a hole)."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = 2 * int(torch.Size(shape).numel())
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, data in (fill or {}).items():
            f.seek(8 + len(raw) + header[name]["data_offsets"][0])
            f.write(data)
        f.truncate(8 + len(raw) + offset)
    return offset


@pytest.fixture(scope="module")
def ramp():
    """A recognisable wk of layer 0: row i holds the value i (so the q/k permutation is visible)."""
    rows = torch.arange(1024, dtype=torch.bfloat16)[:, None].expand(1024, 5120).contiguous()
    return rows


def test_native_real_shapes(tmp_path, ramp):
    (tmp_path / "params.json").write_text(json.dumps(PARAMS_JSON))
    shapes = real_shapes()
    fill = {"layers.0.attention.wk.weight": ramp.view(torch.int16).numpy().tobytes()}
    total = write_sparse_safetensors(tmp_path / "consolidated.safetensors", shapes, fill)
    assert 25.0e9 < total < 25.6e9  # 25.4 GB like the published file
    model = build_model(find_checkpoint(tmp_path), dtype=torch.bfloat16, device="meta")
    assert sum(p.numel() for p in model.parameters()) == sum(torch.Size(s).numel() for s in shapes.values())
    assert torch.equal(read_tensor(tmp_path, "layers.0.attention.wk.weight"), ramp)
    assert read_tensor(tmp_path, "norm.weight").shape == (5120,)


def test_hf_real_shapes_with_shard_index(tmp_path, ramp):
    from pixdesk.weights.layouts import permute_to_hf

    (tmp_path / "config.json").write_text(json.dumps(CONFIG_JSON))
    shapes = {native_to_hf(n): s for n, s in real_shapes().items()}
    names = sorted(shapes)
    weight_map = {}
    hf_wk = permute_to_hf(ramp, 8).contiguous()
    for i in range(6):
        fname = f"model-{i + 1:05d}-of-00006.safetensors"
        part = {n: shapes[n] for n in names[i::6]}
        key = "language_model.model.layers.0.self_attn.k_proj.weight"
        fill = {key: hf_wk.view(torch.int16).numpy().tobytes()} if key in part else None
        write_sparse_safetensors(tmp_path / fname, part, fill)
        weight_map.update({n: fname for n in part})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    files = find_checkpoint(tmp_path)
    assert files.layout == "hf" and len(files.weight_files) == 6
    build_model(files, dtype=torch.bfloat16, device="meta")
    # The loader undoes the HF rotate-half permutation: back to the native ramp.
    assert torch.equal(read_tensor(tmp_path, "layers.0.attention.wk.weight"), ramp)
