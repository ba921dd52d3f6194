"""Preallocated KV slots, owned by the engine; the model sees a `SlotView` for one forward call.

One tensor per layer (separate storage, so an in-place write to one layer inside a compiled graph never
copies the others), each (n_slots, max_len + 1, n_kv_heads, head_dim). A sequence owns one slot; its
token at absolute position p keeps its keys/values at k[layer][slot, p]. Static shapes, so the decode step
can be compiled and captured in a CUDA graph.
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
        # One spare position per slot (index max_len): the static decode step parks idle slots there.
        shape = (n_slots, max_len + 1, n_kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.n_layers, self.n_slots, self.max_len = n_layers, n_slots, max_len
        self.n_kv_heads, self.head_dim = n_kv_heads, head_dim

    @property
    def device(self) -> torch.device:
        return self.k[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.k[0].dtype

    @property
    def scratch_position(self) -> int:
        return self.max_len

    @classmethod
    def for_model(cls, model, n_slots: int, max_len: int) -> KVCache:
        t = model.args.text
        return cls(
            t.n_layers, n_slots, max_len, t.n_kv_heads, t.head_dim, dtype=model.dtype, device=model.device
        )

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * self.k[0].element_size()

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
        self.slots = slots.to(cache.device)  # (B,)
        self.positions = positions.to(cache.device)  # (B, T)
        B, T = positions.shape
        first, last = int(self.positions[:, 0].min()), int(self.positions.max())
        self.kv_len = last + 1
        # One sequence, contiguous positions: write with a slice and read a view (no gather copies).
        self.single = int(self.slots[0]) if B == 1 and last - first + 1 == T else None
        # A prefill from position 0 is plain causal attention: the flash kernel, no mask tensor.
        self.causal = self.single is not None and first == 0
        self.mask = None
        if not self.causal:
            key_pos = torch.arange(self.kv_len, device=cache.device)
            self.mask = (key_pos[None, None, :] <= self.positions[:, :, None])[:, None]  # (B, 1, T, S)
        self.first = first

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        kc, vc = self.cache.k[layer], self.cache.v[layer]
        if self.single is not None:
            s, lo, hi = self.single, self.first, self.kv_len
            kc[s, lo:hi] = k[0]
            vc[s, lo:hi] = v[0]
            keys, values = kc[s : s + 1, :hi], vc[s : s + 1, :hi]  # (1, S, Hkv, D) views
        else:
            rows = self.slots[:, None]  # (B, 1) broadcasts against positions (B, T)
            kc[rows, self.positions] = k
            vc[rows, self.positions] = v
            keys = kc[self.slots, : self.kv_len]  # (B, S, Hkv, D)
            values = vc[self.slots, : self.kv_len]
        return sdpa(q, keys, values, self.mask, causal=self.causal)
