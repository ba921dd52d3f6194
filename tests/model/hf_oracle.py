"""transformers as the oracle for model math: build LlavaForConditionalGeneration from our args/weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pixdesk.model.args import ModelArgs, from_hf_config
from pixdesk.weights.layouts import canonical_hf, native_to_hf, permute_from_hf, qk_heads
from pixdesk.weights.tiny import params_json, to_hf_state_dict, write_tekken


def hf_config(args: ModelArgs):
    from transformers import LlavaConfig, MistralConfig, PixtralVisionConfig

    t, v = args.text, args.vision
    text = MistralConfig(
        vocab_size=t.vocab_size,
        hidden_size=t.dim,
        intermediate_size=t.hidden_dim,
        num_hidden_layers=t.n_layers,
        num_attention_heads=t.n_heads,
        num_key_value_heads=t.n_kv_heads,
        head_dim=t.head_dim,
        rms_norm_eps=t.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta},
        sliding_window=None,
        tie_word_embeddings=False,
        max_position_embeddings=8192,
    )
    vision = PixtralVisionConfig(
        hidden_size=v.hidden_size,
        intermediate_size=v.intermediate_size,
        num_hidden_layers=v.num_hidden_layers,
        num_attention_heads=v.num_attention_heads,
        num_channels=v.num_channels,
        image_size=v.image_size,
        patch_size=v.patch_size,
        head_dim=v.head_dim,
        rope_parameters={"rope_type": "default", "rope_theta": v.rope_theta},
        hidden_act="silu",
    )
    cfg = LlavaConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=v.image_token_id,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        projector_hidden_act="gelu",
        multimodal_projector_bias=v.adapter_bias,
        tie_word_embeddings=False,
    )
    cfg._attn_implementation = "eager"
    return cfg


def hf_model(args: ModelArgs, native_state: dict):
    """An HF model in fp32 holding exactly `native_state` (renamed and q/k-permuted)."""
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration(hf_config(args)).eval()
    on_disk = to_hf_state_dict(native_state, args)
    own = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in own.items():
            p.copy_(on_disk[canonical_hf(name)])
    assert len(own) == len(on_disk)
    return model


def hf_logits(model, ids: list[int], images: list[torch.Tensor]) -> torch.Tensor:
    """Reference logits (T, V) for one prompt with unpadded images (3, H_i, W_i)."""
    kw = {}
    if images:
        h = max(i.shape[1] for i in images)
        w = max(i.shape[2] for i in images)
        pix = torch.zeros(len(images), 3, h, w)
        for n, img in enumerate(images):
            pix[n, :, : img.shape[1], : img.shape[2]] = img
        kw = {"pixel_values": pix, "image_sizes": torch.tensor([list(i.shape[1:]) for i in images])}
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), **kw).logits[0].float()


def native_from_hf_dir(hf_dir: Path, out_dir: Path) -> Path:
    """Write a native checkpoint from an HF save_pretrained directory (independent of our loader)."""
    args = from_hf_config(json.loads((hf_dir / "config.json").read_text()))
    table = {}
    state = {}
    for f in sorted(hf_dir.glob("model*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for key in st.keys():
                state[canonical_hf(key)] = st.get_tensor(key)
    native_names = _native_names(args)
    table = {native_to_hf(n): n for n in native_names}
    native = {}
    for hf_name, t in state.items():
        n = table[hf_name]
        heads = qk_heads(n, args)
        native[n] = (permute_from_hf(t, heads) if heads else t).contiguous()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "params.json").write_text(json.dumps(params_json(args)))
    save_file(native, str(out_dir / "consolidated.safetensors"))
    write_tekken(out_dir / "tekken.json", args.text.vocab_size)
    return out_dir


def _native_names(args: ModelArgs) -> list[str]:
    from pixdesk.model.pixtral import Pixtral

    with torch.device("meta"):
        return [n for n, _ in Pixtral(args).named_parameters()]
