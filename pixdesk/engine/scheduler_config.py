"""The scheduler's settings, and what the "auto" ones (0) become for a model on its device."""

from __future__ import annotations

from dataclasses import dataclass, replace

from pixdesk.engine.sizing import resolve_max_context, resolve_solo_chunk


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch: int = 4  # KV slots = sequences decoding together
    max_context: int = 8192  # tokens per slot; 0 = "auto": fit the free device memory (engine/sizing.py)
    max_queue: int = 64  # waiting requests before 429
    per_client_active: int = 4  # admitted sequences per client id
    reserved_interactive: int = 1  # slots batch requests may not take
    prefill_chunk: int = 512  # prompt tokens per prefill step while other sequences decode
    # ... and while none does: each chunk reads all the weights once, so a lone 4,183-token image prompt in
    # 512-token chunks took 261 ms to its first token on an H200, 209-234 in 2,048-token ones and 174 in one
    # (bench/NOTES.md). Its activations are reserved next to the KV cache (engine/sizing.py). 0 = "auto":
    # the largest of 8,192 / 4,096 / 2,048 whose activations take at most 1/16 of the GPU
    # (sizing.resolve_solo_chunk).
    solo_prefill_chunk: int = 0
    prefix_block: int = 16
    prefix_cache_bytes: int = 256 * 2**20
    image_cache_bytes: int = 64 * 2**20
    static_decode: bool | None = None  # all slots in one fixed-shape step; None: on a GPU
    compile: bool | None = None  # torch.compile + CUDA graphs for the static step; None: on a GPU
    pipeline_decode: bool = True  # greedy steps: launch the next before reading this one's picks (static)


def resolved(model, config: SchedulerConfig) -> SchedulerConfig:
    """`config` with its "auto" settings fixed for `model`: the lone prompt's chunk first (max_context
    reserves its activations)."""
    config = replace(config, solo_prefill_chunk=resolve_solo_chunk(model, config))
    return replace(config, max_context=resolve_max_context(model, config))
