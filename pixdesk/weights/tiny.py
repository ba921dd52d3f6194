"""Tiny random Pixtral checkpoints (either layout) with a tiny tekken vocabulary, for tests and the demo.

The demo checkpoint answers with random tokens: it exists to try the wiring (daemon, clients, images)
without a 25 GB download. The architecture keeps the real model's traits: GQA, n_heads*head_dim != dim,
two layers per tower, 2-D RoPE, a biased adapter.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from pixdesk.model.args import ModelArgs, TextArgs, VisionArgs
from pixdesk.model.pixtral import Pixtral
from pixdesk.weights.layouts import native_to_hf, permute_to_hf, qk_heads

TEKKEN_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|"
    r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_SPECIAL = 1000

TINY_ARGS = ModelArgs(
    text=TextArgs(dim=48, n_layers=2, head_dim=16, hidden_dim=96, n_heads=4, n_kv_heads=2, vocab_size=2048),
    vision=VisionArgs(
        hidden_size=32,
        num_channels=3,
        image_size=1024,
        patch_size=16,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
    ),
)

# A small built-in corpus for the tiny vocabulary's merges (no data files, no downloads).
_CORPUS = """
The image shows a screenshot of a code editor with an error message. What does this error mean?
Describe the image. Read the chart into a table. Transcribe the receipt into JSON with the merchant,
the date, the currency, the items, the subtotal, the tax, the tip and the total. Convert this mockup
into HTML with inline CSS. The button is blue and the header has a title and a search field.
def main(): return the value of the function for each item in the list, and print the result.
{"total": 12.50, "currency": "EUR", "items": [{"name": "coffee", "quantity": 2}]}
<div class="container"><h1>Hello world</h1><p>This is a paragraph.</p></div>
Hello, how are you? I am fine, thank you. The answer is in the second row of the table.
"""


def tiny_vocab(n_ranks: int) -> list[bytes]:
    """256 byte tokens, then byte-pair merges learned from the built-in corpus, up to n_ranks entries."""
    ranks = [bytes([b]) for b in range(256)]
    words = Counter(re.findall(r" ?\w+| ?[^\w\s]+|\s+", _CORPUS * 3))
    seqs = {w: [bytes([b]) for b in w.encode()] for w in words}
    while len(ranks) < n_ranks:
        pairs: Counter = Counter()
        for w, seq in seqs.items():
            for a, b in zip(seq, seq[1:]):
                pairs[a, b] += words[w]
        if not pairs:
            break
        (a, b), _ = pairs.most_common(1)[0]
        ranks.append(a + b)
        for w, seq in seqs.items():
            seqs[w] = _merge(seq, a, b)
    # Fill the rest with unused but valid printable two- and three-byte tokens, so every id below vocab_size
    # decodes (a full-size 131,072-id vocabulary for GPU benchmarks included).
    printable = range(0x21, 0x7F)
    two = (bytes([x, y]) for x in printable for y in printable)
    three = (bytes([x, y, z]) for x in printable for y in printable for z in printable)
    filler = itertools.chain(two, three)
    seen = set(ranks)
    for tok in filler:
        if len(ranks) >= n_ranks:
            break
        if tok not in seen:
            ranks.append(tok)
    return ranks


def _merge(seq: list[bytes], a: bytes, b: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(seq):
        if i + 1 < len(seq) and seq[i] == a and seq[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


def write_tekken(path: Path, vocab_size: int, *, patch_size: int = 16, max_image_size: int = 1024) -> None:
    ranks = tiny_vocab(vocab_size - NUM_SPECIAL)
    vocab = []
    for i, tok in enumerate(ranks):
        try:
            text = tok.decode()
        except UnicodeDecodeError:
            text = None
        vocab.append({"rank": i, "token_bytes": base64.b64encode(tok).decode(), "token_str": text})
    doc = {
        "config": {
            "pattern": TEKKEN_PATTERN,
            "num_vocab_tokens": len(ranks),
            "default_vocab_size": vocab_size,
            "default_num_special_tokens": NUM_SPECIAL,
            "version": "v3",
        },
        "vocab": vocab,
        "image": {"image_patch_size": patch_size, "max_image_size": max_image_size},
    }
    path.write_text(json.dumps(doc))


def random_state_dict(args: ModelArgs, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict:
    """Random weights in native names; scaled so activations and logits stay O(1) through the towers."""
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {n: p.shape for n, p in Pixtral(args).named_parameters()}
    state = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight") or name.endswith("ln_pre.weight"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith(".bias"):
            t = 0.1 * torch.randn(shape, generator=gen)
        elif name == "tok_embeddings.weight":
            t = torch.randn(shape, generator=gen)
        else:
            fan_in = shape[1:].numel()
            t = torch.randn(shape, generator=gen) / fan_in**0.5
        state[name] = t.to(dtype).contiguous()
    return state


def params_json(args: ModelArgs) -> dict:
    t, v = args.text, args.vision
    out = {k: getattr(t, k) for k in ("dim", "n_layers", "head_dim", "hidden_dim", "n_heads", "n_kv_heads")}
    out.update(rope_theta=t.rope_theta, norm_eps=t.norm_eps, vocab_size=t.vocab_size)
    if v is not None:
        vis = {k: val for k, val in asdict(v).items() if k not in ("norm_eps",)}
        out["vision_encoder"] = vis
    return out


def hf_config_json(args: ModelArgs) -> dict:
    """transformers 4.x style, like the published mistral-community/pixtral-12b config."""
    t, v = args.text, args.vision
    text = {
        "model_type": "mistral",
        "hidden_size": t.dim,
        "intermediate_size": t.hidden_dim,
        "num_hidden_layers": t.n_layers,
        "num_attention_heads": t.n_heads,
        "num_key_value_heads": t.n_kv_heads,
        "head_dim": t.head_dim,
        "rms_norm_eps": t.norm_eps,
        "rope_theta": t.rope_theta,
        "sliding_window": None,
        "vocab_size": t.vocab_size,
        "max_position_embeddings": 1024000,
        "hidden_act": "silu",
    }
    cfg = {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava", "text_config": text}
    if v is not None:
        cfg.update(
            image_token_index=v.image_token_id,
            projector_hidden_act="gelu",
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
            multimodal_projector_bias=v.adapter_bias,
            tie_word_embeddings=False,
            vision_config={
                "model_type": "pixtral",
                "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size,
                "num_hidden_layers": v.num_hidden_layers,
                "num_attention_heads": v.num_attention_heads,
                "num_channels": v.num_channels,
                "image_size": v.image_size,
                "patch_size": v.patch_size,
                "head_dim": v.head_dim,
                "rope_theta": v.rope_theta,
                "hidden_act": "silu",
            },
        )
    return cfg


def to_hf_state_dict(state: dict, args: ModelArgs) -> dict:
    out = {}
    for name, t in state.items():
        heads = qk_heads(name, args)
        out[native_to_hf(name)] = permute_to_hf(t, heads).contiguous() if heads else t
    return out


def write_checkpoint(
    out_dir: str | Path, args: ModelArgs, state: dict, *, layout: str = "native", shards: int = 1
) -> Path:
    """Write params.json/config.json + safetensors (+ HF shard index when shards > 1) + tekken.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    patch = args.vision.patch_size if args.vision else 16
    max_size = args.vision.image_size if args.vision else 1024
    write_tekken(out / "tekken.json", args.text.vocab_size, patch_size=patch, max_image_size=max_size)
    if layout == "native":
        (out / "params.json").write_text(json.dumps(params_json(args), indent=2))
        save_file(state, str(out / "consolidated.safetensors"))
        return out
    (out / "config.json").write_text(json.dumps(hf_config_json(args), indent=2))
    hf = to_hf_state_dict(state, args)
    if shards == 1:
        save_file(hf, str(out / "model.safetensors"))
        return out
    names = sorted(hf)
    weight_map = {}
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: hf[n] for n in names[i::shards]}
        save_file(part, str(out / fname))
        weight_map.update({n: fname for n in part})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return out


def make_tiny_checkpoint(
    out_dir: str | Path,
    *,
    layout: str = "native",
    seed: int = 0,
    args: ModelArgs = TINY_ARGS,
    **text_overrides,
) -> Path:
    if text_overrides:
        args = replace(args, text=replace(args.text, **text_overrides))
    return write_checkpoint(out_dir, args, random_state_dict(args, seed), layout=layout)
