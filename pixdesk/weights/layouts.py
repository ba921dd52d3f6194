"""Native <-> Hugging Face tensor names and the q/k row permutation (PIXTRAL.md §2.2, §2.3).

All renaming lives here. Our modules use native names; an HF checkpoint is renamed and its q/k rows are
permuted from rotate-half order back to the interleaved order our RoPE uses.
"""

from __future__ import annotations

import re

import torch

from pixdesk.model.args import ModelArgs

# (native regex, HF on-disk template). `{N}` is the layer index captured by the regex.
_RULES: list[tuple[str, str]] = [
    (r"tok_embeddings\.weight", "language_model.model.embed_tokens.weight"),
    (r"norm\.weight", "language_model.model.norm.weight"),
    (r"output\.weight", "language_model.lm_head.weight"),
    (r"layers\.(\d+)\.attention\.wq\.weight", "language_model.model.layers.{N}.self_attn.q_proj.weight"),
    (r"layers\.(\d+)\.attention\.wk\.weight", "language_model.model.layers.{N}.self_attn.k_proj.weight"),
    (r"layers\.(\d+)\.attention\.wv\.weight", "language_model.model.layers.{N}.self_attn.v_proj.weight"),
    (r"layers\.(\d+)\.attention\.wo\.weight", "language_model.model.layers.{N}.self_attn.o_proj.weight"),
    (r"layers\.(\d+)\.feed_forward\.w1\.weight", "language_model.model.layers.{N}.mlp.gate_proj.weight"),
    (r"layers\.(\d+)\.feed_forward\.w2\.weight", "language_model.model.layers.{N}.mlp.down_proj.weight"),
    (r"layers\.(\d+)\.feed_forward\.w3\.weight", "language_model.model.layers.{N}.mlp.up_proj.weight"),
    (r"layers\.(\d+)\.attention_norm\.weight", "language_model.model.layers.{N}.input_layernorm.weight"),
    (r"layers\.(\d+)\.ffn_norm\.weight", "language_model.model.layers.{N}.post_attention_layernorm.weight"),
    (r"vision_encoder\.patch_conv\.weight", "vision_tower.patch_conv.weight"),
    (r"vision_encoder\.ln_pre\.weight", "vision_tower.ln_pre.weight"),
    (
        r"vision_encoder\.transformer\.layers\.(\d+)\.attention\.w([qkvo])\.weight",
        "vision_tower.transformer.layers.{N}.attention.{P}_proj.weight",
    ),
    (
        r"vision_encoder\.transformer\.layers\.(\d+)\.feed_forward\.w1\.weight",
        "vision_tower.transformer.layers.{N}.feed_forward.gate_proj.weight",
    ),
    (
        r"vision_encoder\.transformer\.layers\.(\d+)\.feed_forward\.w2\.weight",
        "vision_tower.transformer.layers.{N}.feed_forward.down_proj.weight",
    ),
    (
        r"vision_encoder\.transformer\.layers\.(\d+)\.feed_forward\.w3\.weight",
        "vision_tower.transformer.layers.{N}.feed_forward.up_proj.weight",
    ),
    (
        r"vision_encoder\.transformer\.layers\.(\d+)\.(attention_norm|ffn_norm)\.weight",
        "vision_tower.transformer.layers.{N}.{P}.weight",
    ),
    (r"vision_language_adapter\.w_in\.(weight|bias)", "multi_modal_projector.linear_1.{N}"),
    (r"vision_language_adapter\.w_out\.(weight|bias)", "multi_modal_projector.linear_2.{N}"),
]
_COMPILED = [(re.compile(n + "$"), hf) for n, hf in _RULES]

# transformers >= 4.52 in-memory / 5.x save_pretrained spelling -> the published on-disk spelling.
_HF_ALIASES = [
    ("model.language_model.", "language_model.model."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("lm_head.", "language_model.lm_head."),
]


def native_to_hf(name: str) -> str:
    for pattern, template in _COMPILED:
        m = pattern.match(name)
        if m:
            groups = m.groups()
            return template.format(N=groups[0] if groups else "", P=groups[1] if len(groups) > 1 else "")
    raise KeyError(name)


def canonical_hf(name: str) -> str:
    """Map either HF spelling (on-disk 4.x or in-memory/5.x) to the on-disk 4.x one."""
    for new, old in _HF_ALIASES:
        if name.startswith(new):
            return old + name[len(new) :]
    return name


def hf_name_table(native_names: list[str]) -> dict[str, str]:
    """canonical HF name -> native name, for the tensors a model expects."""
    return {native_to_hf(n): n for n in native_names}


def qk_heads(native_name: str, args: ModelArgs) -> int | None:
    """Number of heads to permute for this tensor, or None when it is not a q/k projection."""
    if re.fullmatch(r"layers\.\d+\.attention\.wq\.weight", native_name):
        return args.text.n_heads
    if re.fullmatch(r"layers\.\d+\.attention\.wk\.weight", native_name):
        return args.text.n_kv_heads
    if re.fullmatch(r"vision_encoder\.transformer\.layers\.\d+\.attention\.w[qk]\.weight", native_name):
        return args.vision.num_attention_heads
    return None


def permute_to_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Native interleaved rows -> HF rotate-half rows: (H, hd/2, 2) -> (H, 2, hd/2) per head."""
    out_dim, in_dim = w.shape
    hd = out_dim // n_heads
    return w.view(n_heads, hd // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def permute_from_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of permute_to_hf: HF_row[h*hd + p*hd/2 + i] -> native_row[h*hd + 2i + p]."""
    out_dim, in_dim = w.shape
    hd = out_dim // n_heads
    return w.view(n_heads, 2, hd // 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)
