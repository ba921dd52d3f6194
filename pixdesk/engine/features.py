"""Vision features for the part of a prompt that still needs prefill, with a cache keyed by image digest.

A repeated image costs no second vision-encoder call; an image that lies entirely inside the reused
prefix costs no call at all.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from pixdesk.tokenizer.chat import EncodedPrompt


class FeatureCache:
    """Adapter outputs per image digest, LRU under a byte budget."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self.items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.used = 0

    def get(self, digest: str) -> torch.Tensor | None:
        t = self.items.get(digest)
        if t is not None:
            self.items.move_to_end(digest)
        return t

    def put(self, digest: str, feats: torch.Tensor) -> None:
        size = feats.numel() * feats.element_size()
        if size > self.budget or digest in self.items:
            return
        while self.used + size > self.budget and self.items:
            _, old = self.items.popitem(last=False)
            self.used -= old.numel() * old.element_size()
        self.items[digest] = feats
        self.used += size


def prompt_features(
    model, prompt: EncodedPrompt, start: int, cache: FeatureCache, stats, blocks=None
) -> torch.Tensor | None:
    """Feature rows for the [IMG] tokens at positions >= start, in token order (None if there are none).

    `blocks`: the vision encoder's layers as compiled regions (model/regions.py)."""
    img_id = model.args.vision.image_token_id if model.args.vision else -1
    skip = sum(1 for t in prompt.ids[:start] if t == img_id)  # image rows already inside the reused prefix
    rows, seen = [], 0
    for image in prompt.images:
        lo, seen = seen, seen + image.n_patches
        if seen <= skip:
            continue
        feats = cache.get(image.digest)
        if feats is None:
            feats = model.encode_images([image.pixels], blocks)
            stats.vision_calls += 1
            cache.put(image.digest, feats)
        rows.append(feats[max(0, skip - lo) :])
    return torch.cat(rows) if rows else None
