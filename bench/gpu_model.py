"""Full-size Pixtral-12B shapes with random weights, prompts and the transformers twin, for bench/gpu.py."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

from pixdesk.model.args import from_params_json
from pixdesk.model.pixtral import Pixtral
from pixdesk.tokenizer.chat import EncodedPrompt
from pixdesk.tokenizer.image import PreparedImage, image_token_ids
from pixdesk.weights.checkpoint import Checkpoint
from pixdesk.weights.load import CheckpointFiles, _assign

PARAMS = {  # mistralai/Pixtral-12B-2409 params.json (PIXTRAL.md §1.1)
    "dim": 5120, "n_layers": 40, "head_dim": 128, "hidden_dim": 14336, "n_heads": 32, "n_kv_heads": 8,
    "rope_theta": 1e9, "norm_eps": 1e-5, "vocab_size": 131072,
    "vision_encoder": {"hidden_size": 1024, "num_channels": 3, "image_size": 1024, "patch_size": 16,
                       "rope_theta": 1e4, "intermediate_size": 4096, "num_hidden_layers": 24,
                       "num_attention_heads": 16, "image_token_id": 10},
}  # fmt: skip
PIXTRAL_12B = from_params_json(PARAMS)
IMAGE_GRID = (64, 64)  # a 1024x1024 image
DEVICE = "cuda"
if os.environ.get("PIXDESK_BENCH_SMOKE"):  # a CPU dry run of the stages with small shapes
    from pixdesk.weights.tiny import TINY_ARGS as PIXTRAL_12B  # noqa: F811

    IMAGE_GRID, DEVICE = (8, 8), "cpu"
    PARAMS = __import__("pixdesk.weights.tiny", fromlist=["params_json"]).params_json(PIXTRAL_12B)


def _init(name: str, shape, dtype, device, gen) -> torch.Tensor:
    if name.endswith("norm.weight") or name.endswith("ln_pre.weight"):
        return (1 + 0.1 * torch.randn(shape, device=device, generator=gen)).to(dtype)
    if name.endswith(".bias"):
        return (0.02 * torch.randn(shape, device=device, generator=gen)).to(dtype)
    scale = 1.0 if name == "tok_embeddings.weight" else torch.Size(shape[1:]).numel() ** -0.5
    return torch.randn(shape, device=device, dtype=dtype, generator=gen) * scale


def random_model(args, dtype, device, seed: int = 0) -> Pixtral:
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.device("meta"):
        model = Pixtral(args)
    for name, p in list(model.named_parameters()):
        _assign(model, name, _init(name, p.shape, dtype, device, gen))
    return model.eval()


def synthetic_tokenizer(workdir: Path):
    from pixdesk.tokenizer.tekken import Tekkenizer
    from pixdesk.weights.tiny import write_tekken

    path = Path(workdir) / "tekken-synthetic.json"
    write_tekken(path, PIXTRAL_12B.text.vocab_size)
    return Tekkenizer.from_file(path)


def random_checkpoint(args, dtype, device, tokenizer, seed: int = 0) -> Checkpoint:
    files = CheckpointFiles(Path("random-pixtral-12b"), "random", Path("params.json"), ())
    return Checkpoint(random_model(args, dtype, device, seed), tokenizer, files, {"random_seed": seed})


def served_checkpoint(quant: str, scratch: Path) -> Checkpoint:
    """The random full-size checkpoint as the engine serves it: bf16, quantized in place unless `quant` is
    "none", projections fused. `scratch`: a folder for the synthetic tokenizer file."""
    from pixdesk.model.quant import QuantSpec, quantize_model

    scratch.mkdir(parents=True, exist_ok=True)
    ckpt = random_checkpoint(PIXTRAL_12B, torch.bfloat16, DEVICE, synthetic_tokenizer(scratch))
    if quant != "none":
        quantize_model(ckpt.model, QuantSpec(quant))
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    ckpt.model.fuse_projections()
    return ckpt


def image_prompt(seed: int, question: list[int]) -> EncodedPrompt:
    """`<s>[INST]` + a 64x64-patch image grid + question ids + `[/INST]` (4,183 tokens with 20 question ids)."""
    rows, cols = IMAGE_GRID
    px = torch.randn(3, rows * 16, cols * 16, generator=torch.Generator().manual_seed(seed))
    img = PreparedImage(px, rows, cols, f"bench-image-{seed}", (cols * 16, rows * 16))
    return EncodedPrompt([1, 3] + image_token_ids(rows, cols) + list(question) + [4], [img])


def our_full_logits(model: Pixtral, prompt: EncodedPrompt) -> torch.Tensor:
    from pixdesk.engine.cache import KVCache
    from pixdesk.engine.generate import embed_prompt, prefill

    kv = KVCache.for_model(model, 1, len(prompt.ids))
    with torch.inference_mode():
        out = prefill(model, kv, 0, embed_prompt(model, prompt), 0, chunk=8192)
    del kv
    return out


def hf_config():
    from transformers import LlavaConfig, MistralConfig, PixtralVisionConfig

    text = MistralConfig(hidden_size=5120, head_dim=128, intermediate_size=14336, num_hidden_layers=40,
                         num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=1e9,
                         max_position_embeddings=131072, sliding_window=None, vocab_size=131072)
    vision = PixtralVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                 num_attention_heads=16, head_dim=64, image_size=1024, patch_size=16,
                                 rope_theta=10000.0, hidden_act="silu")
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=10, projector_hidden_act="gelu",
                      vision_feature_layer=-1, vision_feature_select_strategy="full")  # fmt: skip
    cfg._attn_implementation = "sdpa"
    return cfg


def hf_from_ours(model: Pixtral):
    """An HF LlavaForConditionalGeneration (bf16, cuda) holding our weights; ours are freed one by one."""
    from transformers import LlavaForConditionalGeneration

    from pixdesk.weights.layouts import canonical_hf, native_to_hf, permute_to_hf, qk_heads

    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(DEVICE):
            hf = LlavaForConditionalGeneration(hf_config()).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    theirs = {canonical_hf(n): p for n, p in hf.named_parameters()}
    with torch.no_grad():
        for name, p in list(model.named_parameters()):
            heads = qk_heads(name, model.args)
            src = permute_to_hf(p, heads) if heads else p
            theirs[native_to_hf(name)].copy_(src)
            _assign(model, name, torch.empty(0, device=DEVICE))
    return hf


def write_real_checkpoint(out: Path, seed: int = 0) -> int:
    """A native-layout checkpoint with the real names, shapes and bf16 dtype, random data, written tensor by
    tensor (25.4 GB). Returns the file size."""
    from pixdesk.weights.tiny import write_tekken

    out.mkdir(parents=True, exist_ok=True)
    (out / "params.json").write_text(json.dumps(PARAMS))
    write_tekken(out / "tekken.json", PIXTRAL_12B.text.vocab_size)
    with torch.device("meta"):
        shapes = {n: tuple(p.shape) for n, p in Pixtral(PIXTRAL_12B).named_parameters()}
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = 2 * torch.Size(shape).numel()
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    with open(out / "consolidated.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in shapes.items():
            t = _init(name, shape, torch.bfloat16, DEVICE, gen).cpu()
            f.write(t.view(torch.int16).numpy().tobytes())
    return 8 + len(raw) + offset
