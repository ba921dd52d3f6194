"""Short prefills as a CUDA-graph replay: a follow-up question after a prefix hit costs one weight read.

A 20-token prefill run eagerly is launch-bound: ~20 kernels per layer from Python, ~20 ms on an H200
for ~6 ms of GPU work (bench/profile_prefill.py). Here the T new tokens of one slot run as T rows of the
decode step's shape, each row one token at its own position, padded to a row bucket (16, 32, 64): every
row writes its keys and values first, then each row attends to the keys before its own position (row r
sees `lengths[r] = position + 1` keys, the new rows before it included), which is causal attention.
Each layer runs as the compiled regions the long prefill uses (model/regions.py: compiling one layer, not
the whole 40-layer step, keeps the engine's start short), with attention between them. The rows are laid
out as one sequence, (1, rows, dim), the shape a prefill chunk has, so the regions' graph for a dynamic
length serves them as well (as (rows, 1, dim) they were a second specialization, compiled at every start:
most of the 2.7 s this warm-up step took on an H200 with a warm compile cache). The step is captured as a
CUDA graph per (rows, key bucket) like the decode step (engine/static.py); inside a graph the Python
between the regions costs nothing. The LM head runs for the last real row only.

Padded rows write to the slot's spare position (the decode step's park spot) and attend to one key;
their outputs are never read.
"""

from __future__ import annotations

import torch

from pixdesk.engine.cache import KVCache
from pixdesk.engine.static import capture, key_bucket, warm_attention
from pixdesk.model.layers import gqa_decode
from pixdesk.model.quant import QuantLinear
from pixdesk.model.quant_ops import DECODE_ROWS
from pixdesk.model.regions import CompiledBlocks

ROW_BUCKETS = (16, 32, 64)


class RowsView:
    """KV view where row r is one token of slot `slots[r]` at `positions[r]`, attending `lengths[r]` keys."""

    def __init__(self, cache: KVCache, slots, positions, lengths, key_pos: torch.Tensor, kernel: bool):
        self.cache, self.slots, self.positions, self.lengths = cache, slots, positions, lengths
        self.key_pos, self.kernel = key_pos, kernel

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (1, rows, H, D), k and v (1, rows, Hkv, D): the rows as one sequence -> (1, rows, H, D)."""
        kc, vc = self.cache.k[layer], self.cache.v[layer]
        kc[self.slots, self.positions] = k[0]
        vc[self.slots, self.positions] = v[0]
        n_keys = self.key_pos.shape[0]
        if self.kernel:
            return torch.ops.pixdesk.decode_attention(q[0], kc, vc, self.lengths, n_keys, self.slots)[None]
        mask = self.key_pos[None, :] < self.lengths[:, None]  # (rows, n_keys)
        out = gqa_decode(q[0][:, None], kc[self.slots, :n_keys], vc[self.slots, :n_keys], mask)
        return out[:, 0][None]


class GraphPrefill:
    """`run(slot, embeds, start)`: the same KV writes and last-position logits as `generate.prefill`."""

    def __init__(
        self, model, cache: KVCache, *, blocks: CompiledBlocks | None, kernel: bool, bucket_size: int = 512
    ):
        """blocks: the layers as compiled regions; with them, on CUDA, each (rows, key bucket) is captured."""
        self.model, self.cache, self.bucket_size = model, cache, bucket_size
        self.blocks, self.kernel = blocks, kernel
        if kernel:
            import pixdesk.engine.decode_attention  # noqa: F401  (registers pixdesk::decode_attention)
        self.use_graphs = blocks is not None and cache.device.type == "cuda"
        # Quantized linears read packed weights only up to DECODE_ROWS rows; past that they dequantize the
        # whole weight per call (model/quant_ops.py), no cheaper inside a graph than in the eager prefill.
        quantized = any(isinstance(m, QuantLinear) for m in model.modules())
        self.row_buckets = (
            tuple(r for r in ROW_BUCKETS if not quantized or r <= DECODE_ROWS) or ROW_BUCKETS[:1]
        )
        device, dim = cache.device, model.args.text.dim
        rows = ROW_BUCKETS[-1]
        self.h = torch.zeros(1, rows, dim, dtype=model.dtype, device=device)
        pinned = device.type == "cuda"
        self._staging = torch.zeros(4, rows, dtype=torch.long, pin_memory=pinned)
        self._io = torch.zeros(4, rows, dtype=torch.long, device=device)  # slots, positions, lengths, last
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._key_pos: dict[int, torch.Tensor] = {}
        self._pool = None

    def fits(self, n: int) -> bool:
        return 0 < n <= self.row_buckets[-1]

    def _step(self, h, slots, positions, lengths, last, key_pos) -> torch.Tensor:
        view = RowsView(self.cache, slots, positions, lengths, key_pos, self.kernel)
        out = self.model(h, positions[None], view, self.blocks)  # (1, rows, dim)
        return self.model.logits(out[0].index_select(0, last))[0]  # (V,) fp32

    def _args(self, rows: int, bucket: int) -> tuple:
        io = self._io[:, :rows]
        return self.h[:, :rows], io[0], io[1], io[2], self._io[3, :1], self._keys(bucket)

    def _keys(self, bucket: int) -> torch.Tensor:
        if bucket not in self._key_pos:
            self._key_pos[bucket] = torch.arange(bucket, device=self.cache.device)
        return self._key_pos[bucket]

    def _graph(self, rows: int, bucket: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        key = (rows, bucket)
        if key not in self.graphs:
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            self.graphs[key] = capture(self._step, self._args(rows, bucket), self._pool)
        return self.graphs[key]

    def warm_attention(self) -> int:
        """The decode-attention kernel variants of every (row bucket, key bucket) compiled now, as for the
        decode step (StaticDecoder.warm_attention); returns the launches made."""
        if not (self.kernel and self.use_graphs):
            return 0
        return warm_attention(self.model, self.cache, self.bucket_size, self.row_buckets, True)

    def run(self, slot: int, embeds: torch.Tensor, start: int) -> torch.Tensor:
        """Embeddings (T, dim) of a slot at positions start.. (`fits(T)`) -> fp32 logits (V,) of the last."""
        n = embeds.shape[0]
        rows = next(r for r in self.row_buckets if r >= n)
        spare = self.cache.scratch_position
        staged = self._staging
        staged[0].fill_(slot)
        staged[1].fill_(spare)
        staged[1, :n] = torch.arange(start, start + n)
        staged[2].fill_(1)
        staged[2, :n] = staged[1, :n] + 1
        staged[3, 0] = n - 1
        self._io.copy_(staged, non_blocking=True)
        self.h[0, :n].copy_(embeds)
        self.h[0, n:rows].zero_()
        bucket = key_bucket(start + n, self.bucket_size, self.cache.max_len)
        if self.use_graphs:
            graph, logits = self._graph(rows, bucket)
            graph.replay()
            out = logits.clone()
        else:
            out = self._step(*self._args(rows, bucket))
        if staged.is_pinned():
            torch.cuda.current_stream().synchronize()  # the staging buffer is reused by the next call
        return out
