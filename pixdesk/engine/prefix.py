"""Prefix cache: KV of fixed-size token blocks keyed by a hash chain over token content; LRU, byte budget.

Keys. `[IMG]` ids are the same for every image, so a token's content key is its id, except for image
tokens, whose key is (image digest, patch index). Block i's key is sha256(key of block i-1, contents of
block i), so a block matches only when everything before it matches too.

Example, block size 4, prompt `<s> [INST] [IMG]a0 [IMG]a1 | [IMG_BREAK] ...` with image digest "a":
block 0 = (1, 3, ("a", 0), ("a", 1)); the same text with image "b" gives another block-0 key, so two
different images never share KV even when their token ids are identical.

Storage. Blocks live in a preallocated store (n_blocks, n_layers, 2, block, n_kv_heads, head_dim). The
engine copies matched blocks into a sequence's KV slot at admission and copies a finished sequence's new
full blocks out of its slot (one gathered copy per layer, not one per block). A request pins the blocks
it matched until it ends; pinned blocks are never
evicted, and eviction takes least-recently-used leaves only (a block no cached block depends on), so a
cached chain never has a hole.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from pixdesk.engine.cache import KVCache


class TokenKeys:
    """Content keys of a token sequence as arrays: hashing a 4k-token image prompt costs ~1 ms, not ~10.

    `codes[i]` is the token id, or -(1 + patch index) for an image's [IMG] token; `spans` holds
    (first token, last token + 1, digest) per image. `keys + ids` appends generated ids (plain tokens).
    """

    def __init__(self, codes: np.ndarray, spans: tuple[tuple[int, int, str], ...] = ()):
        self.codes, self.spans = codes, spans

    def __len__(self) -> int:
        return len(self.codes)

    def __add__(self, ids: list[int]) -> TokenKeys:
        return TokenKeys(np.concatenate([self.codes, np.asarray(ids, dtype=np.int64)]), self.spans)


def token_keys(ids: list[int], image_digests: list[str], image_sizes: list[int], img_id: int) -> TokenKeys:
    """Content keys: the id, or (digest, patch index) for the n-th image's [IMG] tokens, in order."""
    codes = np.asarray(ids, dtype=np.int64)
    where = np.flatnonzero(codes == img_id)
    spans, done = [], 0
    for digest, size in zip(image_digests, image_sizes):
        pos = where[done : done + size]
        if not len(pos):
            break
        codes[pos] = -1 - np.arange(len(pos))
        spans.append((int(pos[0]), int(pos[-1]) + 1, digest))
        done += size
    return TokenKeys(codes, tuple(spans))


def chain_keys(keys: TokenKeys | list[int], block: int) -> list[bytes]:
    """One hash per full block; each covers the block and, through its parent, everything before it.

    A block hashes its codes and the digests of the images it overlaps, in order. Given the same parent,
    that is injective: within a block, a new image starts where the patch index restarts at 0.
    """
    if not isinstance(keys, TokenKeys):
        keys = TokenKeys(np.asarray(keys, dtype=np.int64))
    raw, width = keys.codes.tobytes(), keys.codes.itemsize
    out, parent = [], b"pixdesk-prefix-v2"
    for lo in range(0, len(keys) - block + 1, block):
        h = hashlib.sha256(parent)
        h.update(raw[lo * width : (lo + block) * width])
        for first, end, digest in keys.spans:
            if first < lo + block and end > lo:
                h.update(digest.encode())
        parent = h.digest()
        out.append(parent)
    return out


@dataclass
class _Entry:
    index: int  # row in the store
    parent: bytes | None
    pins: int = 0
    children: int = 0


@dataclass
class PrefixStats:
    lookups: int = 0
    hit_tokens: int = 0
    lookup_tokens: int = 0
    inserted_blocks: int = 0
    evicted_blocks: int = 0
    skipped_inserts: int = 0  # no room: everything pinned or budget zero

    def as_dict(self) -> dict:
        ratio = self.hit_tokens / self.lookup_tokens if self.lookup_tokens else 0.0
        return {**self.__dict__, "hit_ratio": ratio}


@dataclass
class Match:
    keys: list[bytes]  # matched block keys, pinned until release()
    tokens: int
    store_rows: list[int] = field(default_factory=list)


class PrefixCache:
    def __init__(self, kv: KVCache, block: int, budget_bytes: int):
        """Sized from the engine's KV cache (layers, heads, dtype, device) and a byte budget."""
        n_layers, hkv, hd = kv.n_layers, kv.n_kv_heads, kv.head_dim
        self.block = block
        per_block = 2 * n_layers * block * hkv * hd * kv.k[0].element_size()
        self.capacity = max(0, budget_bytes // per_block)
        self.store = torch.zeros(
            (self.capacity, n_layers, 2, block, hkv, hd), dtype=kv.dtype, device=kv.device
        )
        self.bytes_per_block = per_block
        self.entries: OrderedDict[bytes, _Entry] = OrderedDict()  # LRU order: oldest first
        self.free_rows = list(range(self.capacity))
        self.stats = PrefixStats()

    # ----------------------------------------------------------------------------------- lookup

    def match(self, keys: list[bytes], max_tokens: int) -> Match:
        """Longest cached prefix covering at most max_tokens tokens; pins the matched blocks."""
        self.stats.lookups += 1
        self.stats.lookup_tokens += max_tokens
        hit: list[bytes] = []
        for k in keys[: max_tokens // self.block]:
            if k not in self.entries:
                break
            hit.append(k)
        for k in hit:
            self.entries[k].pins += 1
            self.entries.move_to_end(k)
        self.stats.hit_tokens += len(hit) * self.block
        return Match(hit, len(hit) * self.block, [self.entries[k].index for k in hit])

    def release(self, match: Match) -> None:
        for k in match.keys:
            self.entries[k].pins -= 1
        match.keys = []

    def copy_into(self, match: Match, kv: KVCache, slot: int) -> None:
        """Copy matched blocks into positions [0, match.tokens) of a slot."""
        if not match.store_rows:
            return
        rows = torch.tensor(match.store_rows, device=self.store.device)
        blocks = self.store[rows]  # (nb, n_layers, 2, block, Hkv, D)
        n = match.tokens
        for layer in range(kv.n_layers):
            kv.k[layer][slot, :n] = blocks[:, layer, 0].flatten(0, 1)
            kv.v[layer][slot, :n] = blocks[:, layer, 1].flatten(0, 1)

    # ----------------------------------------------------------------------------------- insert

    def insert(self, keys: list[bytes], kv: KVCache, slot: int, n_tokens: int) -> int:
        """Store the slot's full blocks among its first n_tokens whose keys are new. Returns blocks added."""
        added, parent, held, copies = 0, None, [], []
        for i, k in enumerate(keys[: n_tokens // self.block]):
            if k in self.entries:
                self.entries.move_to_end(k)
            else:
                row = self._allocate()
                if row is None:
                    self.stats.skipped_inserts += 1
                    break
                copies.append((row, i))
                self.entries[k] = _Entry(row, parent)
                if parent is not None:
                    self.entries[parent].children += 1
                added += 1
            self.entries[k].pins += 1  # held while its children go in, so eviction cannot take it
            held.append(k)
            parent = k
        for k in held:
            self.entries[k].pins -= 1
        self._copy_out(copies, kv, slot)
        self.stats.inserted_blocks += added
        return added

    def _copy_out(self, copies: list[tuple[int, int]], kv: KVCache, slot: int) -> None:
        """Slot blocks -> store rows, one gathered copy per layer."""
        if not copies:
            return
        b, dev = self.block, self.store.device
        rows = torch.tensor([r for r, _ in copies], device=dev)
        pos = torch.tensor([i * b + j for _, i in copies for j in range(b)], device=dev)
        for layer in range(kv.n_layers):
            self.store[rows, layer, 0] = kv.k[layer][slot, pos].unflatten(0, (len(copies), b))
            self.store[rows, layer, 1] = kv.v[layer][slot, pos].unflatten(0, (len(copies), b))

    def _allocate(self) -> int | None:
        if self.free_rows:
            return self.free_rows.pop()
        return self._evict_one()

    def _evict_one(self) -> int | None:
        """Evict the least recently used unpinned leaf (a block no cached block depends on)."""
        for k, e in self.entries.items():
            if e.pins == 0 and e.children == 0:
                del self.entries[k]
                if e.parent is not None and e.parent in self.entries:
                    self.entries[e.parent].children -= 1
                self.stats.evicted_blocks += 1
                return e.index
        return None

    # ----------------------------------------------------------------------------------- info

    @property
    def pinned_blocks(self) -> int:
        return sum(1 for e in self.entries.values() if e.pins)

    @property
    def used_bytes(self) -> int:
        return len(self.entries) * self.bytes_per_block
