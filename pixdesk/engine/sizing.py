"""`max_context = "auto"`: fit the KV slots into the device memory left after weights and activations.

Example, Pixtral-12B bf16 on an 80 GB card with 54 GB free after loading the weights, 4 slots: KV costs
40 layers x 2 x 8 heads x 128 x 2 bytes = 160 KiB per token; minus ~3 GB of activation reserve and the
prefix-cache budget, ~48 GB / (4 x 160 KiB) = 76,800 tokens per slot (rounded down to a multiple of 256).
"""

from __future__ import annotations

from pixdesk.devices import free_device_bytes, total_device_bytes
from pixdesk.errors import InvalidConfig

TRAINED_CONTEXT = 128_000  # Pixtral-12B: mistral-inference precomputes RoPE for 128,000 positions
CPU_CONTEXT = 8192
SLACK_BYTES = 512 * 2**20
SOLO_CHUNKS = (8192, 4096, 2048)  # what solo_prefill_chunk = 0 ("auto") chooses from, largest first
SOLO_SHARE = 16  # ... the largest whose activations take at most this share of the GPU's memory


def kv_bytes_per_token(model) -> int:
    t = model.args.text
    return 2 * t.n_layers * t.n_kv_heads * t.head_dim * model.dtype.itemsize


def chunk_bytes_per_token(model) -> int:
    """A prefill chunk's peak activations per token (residual, q|k|v, gate|up), twice over."""
    t = model.args.text
    return 2 * (6 * t.dim + 2 * t.hidden_dim) * model.dtype.itemsize


def activation_reserve(model, prefill_chunk: int, n_slots: int) -> int:
    """Peak activations of a prefill chunk plus fp32 decode logits, and slack; with quantized weights also
    the largest dequantized weight (prefill multiplies by a float copy)."""
    from pixdesk.model.quant import QuantLinear

    logits = 2 * n_slots * model.args.text.vocab_size * 4
    quantized = [m.in_features * m.out_features for m in model.modules() if isinstance(m, QuantLinear)]
    dequantized = max(quantized, default=0) * model.dtype.itemsize
    return prefill_chunk * chunk_bytes_per_token(model) + logits + dequantized + SLACK_BYTES


def resolve_solo_chunk(model, config) -> int:
    """The configured `solo_prefill_chunk`, or (0 = "auto") the largest of SOLO_CHUNKS whose activations take
    at most 1/SOLO_SHARE of the GPU's memory (a CPU: the smallest). Each chunk reads every weight once, so a
    lone 1024x1024 screenshot prompt (4,183 tokens) in one 8,192-token chunk reached its first token in 174 ms
    on an H200 against 209-234 ms in 2,048-token ones (bench/NOTES.md, sessions 14 and 16). Pixtral-12B in
    bf16: 8,192 takes 1.9 GB (cards of 31 GB and more), 4,096 0.97 GB (16 GB and more), else 2,048."""
    if config.solo_prefill_chunk:
        return config.solo_prefill_chunk
    device = model.device
    if device.type != "cuda":
        return SOLO_CHUNKS[-1]
    budget = total_device_bytes(device) // SOLO_SHARE
    fits = [c for c in SOLO_CHUNKS if c * chunk_bytes_per_token(model) <= budget]
    return fits[0] if fits else SOLO_CHUNKS[-1]


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
    solo = resolve_solo_chunk(model, config)
    reserved = (
        activation_reserve(model, max(config.prefill_chunk, solo), config.max_batch)
        + config.prefix_cache_bytes
        + config.image_cache_bytes
    )
    return auto_max_context(model, config.max_batch, free_bytes=free, reserved_bytes=reserved)
