"""`max_context = "auto"`: fit the KV slots into the device memory left after weights and activations.

Example, Pixtral-12B bf16 on an 80 GB card with 54 GB free after loading the weights, 4 slots: KV costs
40 layers x 2 x 8 heads x 128 x 2 bytes = 160 KiB per token; minus ~3 GB of activation reserve and the
prefix-cache budget, ~48 GB / (4 x 160 KiB) = 76,800 tokens per slot (rounded down to a multiple of 256).
"""

from __future__ import annotations

from pixdesk.devices import free_device_bytes
from pixdesk.errors import InvalidConfig

TRAINED_CONTEXT = 128_000  # Pixtral-12B: mistral-inference precomputes RoPE for 128,000 positions
CPU_CONTEXT = 8192
SLACK_BYTES = 512 * 2**20


def kv_bytes_per_token(model) -> int:
    t = model.args.text
    return 2 * t.n_layers * t.n_kv_heads * t.head_dim * model.dtype.itemsize


def activation_reserve(model, prefill_chunk: int, n_slots: int) -> int:
    """Peak activations of a prefill chunk (residual, q|k|v, gate|up) plus fp32 decode logits, and slack;
    with quantized weights also the largest dequantized weight (prefill multiplies by a float copy)."""
    from pixdesk.model.quant import QuantLinear

    t = model.args.text
    per_token = (6 * t.dim + 2 * t.hidden_dim) * model.dtype.itemsize
    logits = 2 * n_slots * t.vocab_size * 4
    quantized = [m.in_features * m.out_features for m in model.modules() if isinstance(m, QuantLinear)]
    dequantized = max(quantized, default=0) * model.dtype.itemsize
    return 2 * prefill_chunk * per_token + logits + dequantized + SLACK_BYTES


def auto_max_context(model, n_slots: int, *, free_bytes: int, reserved_bytes: int) -> int:
    """Largest per-slot context (a multiple of 256, at most the trained context) that fits `free_bytes`."""
    per_slot_token = n_slots * kv_bytes_per_token(model)
    tokens = (free_bytes - reserved_bytes) // per_slot_token
    tokens = min(TRAINED_CONTEXT, tokens // 256 * 256)
    if tokens < 1024:
        need = (1024 * per_slot_token + reserved_bytes) / 2**30
        raise InvalidConfig(
            f"not enough device memory for the KV cache: {free_bytes / 2**30:.1f} GiB free after the "
            f"weights, {need:.1f} GiB needed for {n_slots} slots of 1,024 tokens; lower engine.max_batch, "
            "prefix_cache_bytes, or use a smaller dtype",
            param="model.max_context",
        )
    return tokens


def resolve_max_context(model, config) -> int:
    """The configured max_context, or (0 = "auto") what fits: free device memory on a GPU, 8192 on a CPU."""
    if config.max_context:
        return config.max_context
    device = model.device
    if device.type != "cuda":
        return CPU_CONTEXT
    free = free_device_bytes(device)
    reserved = (
        activation_reserve(model, max(config.prefill_chunk, config.solo_prefill_chunk), config.max_batch)
        + config.prefix_cache_bytes
        + config.image_cache_bytes
    )
    return auto_max_context(model, config.max_batch, free_bytes=free, reserved_bytes=reserved)
