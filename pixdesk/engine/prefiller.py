"""How a prompt reaches the KV cache: its cached prefix, then which path runs its vision encoder and each
prefill chunk.

- At admission (`start`): the longest cached prefix is copied into the slot (engine/prefix.py), and only
  the images and tokens past it are encoded and embedded.
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
from pixdesk.engine.prefix import PrefixCache, chain_keys, token_keys
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

    def start(self, seq, prefix: PrefixCache, features: FeatureCache, stats) -> None:
        """A newly admitted sequence: its content keys, the longest cached prefix copied into its slot, the
        image features past that prefix and the embeddings of what is left to prefill."""
        p = seq.prompt
        img_id = self.model.args.vision.image_token_id if self.model.args.vision else -1
        seq.token_keys = token_keys(
            p.ids, [i.digest for i in p.images], [i.n_patches for i in p.images], img_id
        )
        seq.block_keys = chain_keys(seq.token_keys, prefix.block)
        seq.match = prefix.match(seq.block_keys, seq.n_prompt - 1)  # always prefill the last token
        prefix.copy_into(seq.match, self.kv, seq.slot)
        seq.start = seq.prefilled = seq.match.tokens
        feats = self.features(p, seq.start, features, stats)
        ids = torch.tensor([p.ids[seq.start :]], device=self.model.device)
        seq.embeds = self.model.embed(ids, feats)[0]
        stats.reused_tokens += seq.start
        stats.prompt_tokens += seq.n_prompt

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
