"""How a prompt reaches the KV cache: which path runs its vision encoder and each prefill chunk.

- A chunk of at most 64 tokens (a follow-up question after a prefix hit, a short prompt) replays the rows
  graph (engine/graph_prefill.py): one weight read instead of ~20 launches per layer from Python.
- Longer chunks and the vision encoder run their blocks as compiled regions (model/regions.py).
- Otherwise (CPU, compile off) the eager blocks.

The two compiled paths are optimisations: if one raises (a compiler error, not memory), the engine logs it
and prefills eagerly from then on. The failed call's writes to the slot are rewritten by the eager prefill
of the same positions, so the request goes on.
"""

from __future__ import annotations

import logging

import torch

from pixdesk.engine.cache import KVCache
from pixdesk.engine.features import FeatureCache, prompt_features
from pixdesk.engine.generate import prefill
from pixdesk.engine.graph_prefill import GraphPrefill
from pixdesk.model.regions import CompiledBlocks
from pixdesk.tokenizer.chat import EncodedPrompt

log = logging.getLogger("pixdesk.engine")
_RAISE = (KeyboardInterrupt, SystemExit, torch.OutOfMemoryError)


class Prefiller:
    def __init__(self, model, kv: KVCache, *, compiled: bool, rows: bool, kernel: bool):
        """compiled: regions for long chunks and vision; rows: the rows graph for short chunks."""
        self.model, self.kv = model, kv
        self.blocks = CompiledBlocks() if compiled else None
        self.rows = GraphPrefill(model, kv, blocks=self.blocks, kernel=kernel) if rows else None

    def features(self, prompt: EncodedPrompt, start: int, cache: FeatureCache, stats) -> torch.Tensor | None:
        """Image feature rows for the [IMG] tokens at positions >= start (engine/features.py)."""
        try:
            return prompt_features(self.model, prompt, start, cache, stats, self.blocks)
        except _RAISE:
            raise
        except Exception:
            if not self._give_up():
                raise
            return prompt_features(self.model, prompt, start, cache, stats)

    def chunk(self, slot: int, part: torch.Tensor, start: int) -> torch.Tensor:
        """Embeddings (T, dim) at positions start.. into `slot` -> fp32 logits (V,) of the last position."""
        n = part.shape[0]
        try:
            if self.rows is not None and self.rows.fits(n):
                return self.rows.run(slot, part, start)
            return prefill(self.model, self.kv, slot, part, start, n, self.blocks)
        except _RAISE:
            raise
        except Exception:
            if not self._give_up():
                raise
            return prefill(self.model, self.kv, slot, part, start, n)

    def _give_up(self) -> bool:
        """Drop the compiled paths after a failure; False when there were none (the error is real)."""
        if self.rows is None and self.blocks is None:
            return False
        log.exception("compiled prefill failed; prefilling eagerly from now on")
        self.rows = self.blocks = None
        return True
