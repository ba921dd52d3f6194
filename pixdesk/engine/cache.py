"""Preallocated KV slots, owned by the engine; the model sees a `SlotView` for one forward call.

Layout per tensor: (n_layers, n_slots, max_len, n_kv_heads, head_dim). A sequence owns one slot; its
token at absolute position p keeps its keys/values at [layer, slot, p]. Static shapes so that the decode
step can later be compiled and captured.
"""

from __future__ import annotations

import torch

from pixdesk.model.layers import sdpa


class KVCache:
    def __init__(
        self,
        n_layers: int,
        n_slots: int,
        max_len: int,
        n_kv_heads: int,
        head_dim: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ):
        shape = (n_layers, n_slots, max_len, n_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.n_slots, self.max_len = n_slots, max_len

    @classmethod
    def for_model(cls, model, n_slots: int, max_len: int) -> KVCache:
        t = model.args.text
        return cls(
            t.n_layers, n_slots, max_len, t.n_kv_heads, t.head_dim, dtype=model.dtype, device=model.device
        )

    @property
    def bytes_per_token(self) -> int:
        n_layers, _, _, hkv, hd = self.k.shape
        return 2 * n_layers * hkv * hd * self.k.element_size()

    def view(self, slots: torch.Tensor, positions: torch.Tensor) -> SlotView:
        return SlotView(self, slots, positions)


class SlotView:
    """One forward call's window on the cache: B sequences (slots), T new tokens each at `positions`.

    Every query at position p sees the keys at positions <= p of its own slot. Padding a batch is safe
    if padded tokens sit at positions after the sequence's real ones: their writes are overwritten
    before any real query can read them.
    """

    def __init__(self, cache: KVCache, slots: torch.Tensor, positions: torch.Tensor):
        self.cache = cache
        self.slots = slots.to(cache.k.device)  # (B,)
        self.positions = positions.to(cache.k.device)  # (B, T)
        self.kv_len = int(self.positions.max()) + 1
        key_pos = torch.arange(self.kv_len, device=cache.k.device)
        self.mask = (key_pos[None, None, :] <= self.positions[:, :, None])[:, None]  # (B, 1, T, S)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        rows = self.slots[:, None]  # (B, 1) broadcasts against positions (B, T)
        self.cache.k[layer][rows, self.positions] = k
        self.cache.v[layer][rows, self.positions] = v
        keys = self.cache.k[layer][self.slots, : self.kv_len]  # (B, S, Hkv, D)
        values = self.cache.v[layer][self.slots, : self.kv_len]
        return sdpa(q, keys, values, self.mask)
