"""Typed model configuration, read from a checkpoint's own JSON.

Two sources: Mistral-native `params.json` (unknown keys are an error) and Hugging Face `config.json`
(LlavaForConditionalGeneration with a Pixtral vision tower; bookkeeping keys are ignored, but every value
that would change the math into something we do not implement is an error naming the key).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any

from pixdesk.errors import InvalidConfig


@dataclass(frozen=True)
class TextArgs:
    dim: int  # hidden width (5120)
    n_layers: int
    head_dim: int  # explicit: n_heads * head_dim != dim in Pixtral-12B (32*128 = 4096)
    hidden_dim: int  # SwiGLU inner width
    n_heads: int
    n_kv_heads: int  # GQA: query head h reads KV head h // (n_heads // n_kv_heads)
    vocab_size: int
    rope_theta: float = 1e9
    norm_eps: float = 1e-5


@dataclass(frozen=True)
class VisionArgs:
    hidden_size: int
    num_channels: int
    image_size: int  # max image side in pixels
    patch_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    rope_theta: float = 1e4
    image_token_id: int = 10
    image_break_token_id: int = 12
    image_end_token_id: int = 13
    adapter_bias: bool = True
    norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_patches_per_side(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class ModelArgs:
    text: TextArgs
    vision: VisionArgs | None


# ---------------------------------------------------------------------------------------------- native

_NATIVE_TEXT = {
    "dim": "dim",
    "n_layers": "n_layers",
    "head_dim": "head_dim",
    "hidden_dim": "hidden_dim",
    "n_heads": "n_heads",
    "n_kv_heads": "n_kv_heads",
    "vocab_size": "vocab_size",
    "rope_theta": "rope_theta",
    "norm_eps": "norm_eps",
}
_NATIVE_VISION = {f.name for f in fields(VisionArgs)} - {"norm_eps"}
# Keys that exist in some Mistral params.json files and are harmless when they hold these values.
_NATIVE_NEUTRAL = {
    "sliding_window": (None,),
    "max_seq_len": None,  # any value: bookkeeping
    "max_position_embeddings": None,
    "model_type": ("transformer",),
    "tied_embeddings": (False,),
    "max_batch_size": None,
}
_VISION_NEUTRAL = {
    "spatial_merge_size": (1,),
    "mm_projector_id": ("",),
    "add_pre_mm_projector_layer_norm": (False,),
    "max_image_size": None,
}


def _check_neutral(key: str, value: Any, allowed: dict[str, tuple | None], where: str) -> None:
    if key not in allowed:
        raise InvalidConfig(f"{where}: unknown key {key!r}; pixdesk does not know what it changes", param=key)
    ok = allowed[key]
    if ok is not None and value not in ok:
        raise InvalidConfig(
            f"{where}: {key} = {value!r} is not supported (pixdesk implements {ok[0]!r} only)", param=key
        )


def from_params_json(params: dict, *, where: str = "params.json") -> ModelArgs:
    """Mistral-native `params.json` -> ModelArgs. Any key we do not understand is an error."""
    text_kw: dict[str, Any] = {}
    vision_raw = None
    for key, value in params.items():
        if key in _NATIVE_TEXT:
            text_kw[_NATIVE_TEXT[key]] = value
        elif key in ("vision_encoder", "vision_encoder_args"):
            vision_raw = value
        else:
            _check_neutral(key, value, _NATIVE_NEUTRAL, where)
    text = _build(TextArgs, text_kw, where)
    vision = None
    if vision_raw is not None:
        vision_kw: dict[str, Any] = {}
        for key, value in vision_raw.items():
            if key in _NATIVE_VISION:
                vision_kw[key] = value
            else:
                _check_neutral(key, value, _VISION_NEUTRAL, f"{where} vision_encoder")
        vision = _build(VisionArgs, vision_kw, f"{where} vision_encoder")
    return _validated(ModelArgs(text=text, vision=vision), where)


# ---------------------------------------------------------------------------------------------- HF

# Defaults of MistralConfig / PixtralVisionConfig for keys the published config.json leaves out.
_HF_TEXT_DEFAULTS = {"num_attention_heads": 32, "rms_norm_eps": 1e-6, "rope_theta": 10000.0}
_HF_VISION_DEFAULTS = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 1024,
    "patch_size": 16,
    "rope_theta": 10000.0,
    "hidden_act": "gelu",
}


def _rope_theta(cfg: dict, default: float, where: str, types: tuple[str, ...] = ("default",)) -> float:
    """transformers 4.x writes `rope_theta`; 5.x writes `rope_parameters` {rope_type, rope_theta}.

    5.17+ calls the vision tower's 2-D RoPE "axial"; it is the same function (PIXTRAL.md §3 step 4).
    """
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling")
    if params:
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type not in types:
            raise InvalidConfig(
                f"{where}: rope_type {rope_type!r} is not supported (only {' or '.join(types)})",
                param="rope_parameters.rope_type",
            )
        if "rope_theta" in params:
            return float(params["rope_theta"])
    return float(cfg.get("rope_theta", default))


def _require(cfg: dict, key: str, allowed: tuple, default: Any, where: str) -> None:
    value = cfg.get(key, default)
    if value not in allowed:
        raise InvalidConfig(
            f"{where}: {key} = {value!r} changes the model into one pixdesk does not implement "
            f"(expected {allowed[0]!r})",
            param=key,
        )


def from_hf_config(cfg: dict, *, where: str = "config.json") -> ModelArgs:
    """HF `config.json` (LlavaForConditionalGeneration + Pixtral vision, or a bare Mistral LM)."""
    if "text_config" in cfg:
        text_cfg = cfg["text_config"]
        vision_cfg = cfg.get("vision_config")
    else:
        text_cfg, vision_cfg = cfg, None
    text = _hf_text(text_cfg, f"{where} text_config" if "text_config" in cfg else where)
    _require(cfg, "tie_word_embeddings", (False,), text_cfg.get("tie_word_embeddings", False), where)
    vision = None
    if vision_cfg is not None:
        _require(cfg, "projector_hidden_act", ("gelu",), "gelu", where)
        _require(cfg, "vision_feature_layer", (-1,), -2, where)
        _require(cfg, "vision_feature_select_strategy", ("full",), "default", where)
        _require(cfg, "spatial_merge_size", (1,), 1, where)
        vision = _hf_vision(vision_cfg, cfg, f"{where} vision_config")
    return _validated(ModelArgs(text=text, vision=vision), where)


def _hf_text(c: dict, where: str) -> TextArgs:
    c = {**_HF_TEXT_DEFAULTS, **c}
    _require(c, "sliding_window", (None,), 4096, where)
    _require(c, "hidden_act", ("silu",), "silu", where)
    for key in ("hidden_size", "num_hidden_layers", "intermediate_size", "num_key_value_heads", "vocab_size"):
        if key not in c:
            raise InvalidConfig(f"{where}: missing key {key!r}", param=key)
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    return TextArgs(
        dim=c["hidden_size"],
        n_layers=c["num_hidden_layers"],
        head_dim=head_dim,
        hidden_dim=c["intermediate_size"],
        n_heads=c["num_attention_heads"],
        n_kv_heads=c["num_key_value_heads"],
        vocab_size=c["vocab_size"],
        rope_theta=_rope_theta(c, 10000.0, where),
        norm_eps=float(c["rms_norm_eps"]),
    )


def _hf_vision(c: dict, top: dict, where: str) -> VisionArgs:
    c = {**_HF_VISION_DEFAULTS, **c}
    if c["hidden_act"] != "silu":
        raise InvalidConfig(
            f"{where}: hidden_act = {c['hidden_act']!r}; Pixtral's vision tower uses 'silu' (older copies of "
            "mistral-community/pixtral-12b said 'gelu' by mistake; update config.json)",
            param="vision_config.hidden_act",
        )
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    if head_dim * c["num_attention_heads"] != c["hidden_size"]:
        raise InvalidConfig(f"{where}: head_dim {head_dim} x heads != hidden_size", param="head_dim")
    return VisionArgs(
        hidden_size=c["hidden_size"],
        num_channels=c["num_channels"],
        image_size=c["image_size"],
        patch_size=c["patch_size"],
        intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["num_hidden_layers"],
        num_attention_heads=c["num_attention_heads"],
        rope_theta=_rope_theta(c, 10000.0, where, ("default", "axial")),
        image_token_id=top.get("image_token_index", top.get("image_token_id", 10)),
        adapter_bias=bool(top.get("multimodal_projector_bias", True)),
        norm_eps=float(c.get("layer_norm_eps", 1e-5)),
    )


# ---------------------------------------------------------------------------------------------- checks


def _build(cls, kw: dict, where: str):
    for f in fields(cls):
        if f.default is MISSING and f.name not in kw:
            raise InvalidConfig(f"{where}: missing key {f.name!r}", param=f.name)
    return cls(**kw)


def _validated(args: ModelArgs, where: str) -> ModelArgs:
    t = args.text
    positive = {
        k: getattr(t, k) for k in ("dim", "n_layers", "head_dim", "hidden_dim", "n_heads", "n_kv_heads")
    }
    for key, value in positive.items():
        if not isinstance(value, int) or value <= 0:
            raise InvalidConfig(f"{where}: {key} must be a positive integer, got {value!r}", param=key)
    if t.n_heads % t.n_kv_heads:
        raise InvalidConfig(f"{where}: n_heads {t.n_heads} is not a multiple of n_kv_heads {t.n_kv_heads}")
    if t.head_dim % 2:
        raise InvalidConfig(f"{where}: head_dim must be even for RoPE, got {t.head_dim}")
    v = args.vision
    if v is not None:
        if v.hidden_size % v.num_attention_heads or v.head_dim % 4:
            raise InvalidConfig(f"{where}: vision head_dim must divide hidden_size and be a multiple of 4")
        if v.image_size % v.patch_size:
            raise InvalidConfig(f"{where}: image_size {v.image_size} is not a multiple of patch_size")
    return args
