"""The static-shape decode step: every KV slot at once, one compiled graph per attention-length bucket.

The scheduler's batch changes every few steps; a CUDA graph wants fixed shapes and addresses. So the step
always runs all `n_slots` rows: live sequences at their positions, idle slots parked on the cache's spare
position (their outputs are dropped). Attention reads the first `bucket` positions of each slot, where
`bucket` is the longest live sequence rounded up to a multiple of `bucket_size`; each bucket compiles once
(torch.compile on a GPU; plain eager on the CPU). The bucket length is a dynamic dimension of the compiled
function, so Dynamo and Inductor run once; a CUDA graph of the compiled step is then captured per bucket
(by hand: inputs live in fixed buffers, the KV cache is fixed memory, and the worker thread replays it).
"""

from __future__ import annotations

import functools

import torch

from pixdesk.engine.cache import KVCache
from pixdesk.engine.slot_picks import SlotPicks
from pixdesk.model.layers import gqa_decode
from pixdesk.model.quant_ops import linear_partials, sum_partials
from pixdesk.model.rope import rope_tables, text_angles

# The compiled step as three compiled functions called from Python: the embedding and rotation tables, one
# decoder layer (called 40 times, so traced once: every input is an argument, Dynamo treats the layer's
# parameters as inputs), and the final norm with the LM head. The CUDA graph captures the 40 calls as one
# replay, so the kernels are the whole step's. History: compiled whole, Dynamo's trace of 40 unrolled layers
# was most of a warm engine start (6.8 s of 13.8 on an H200); as 40 nested compile regions of one layer
# (torch.compiler.nested_compile_region) the first step took 22.8 s instead of 51.2 cold and the replayed
# step 6.990 ms instead of 7.138 (bench/decode_compile.py), but Dynamo still walked all 40 calls (4.6 s warm).
LAYER_REGIONS = True
# The residual add + RMSNorm of the kernel layer as decode_norm's single-pass kernel (off: Inductor's).
FUSED_NORM = True


def _kernel_available(device: torch.device) -> bool:
    """The decode kernels need CUDA and Triton (CUDA builds of torch ship it)."""
    if device.type != "cuda":
        return False
    try:
        _register_kernels()
    except ImportError:
        return False
    return True


def _register_kernels() -> None:
    """Import the decode kernels' modules, which register their torch.ops.pixdesk ops."""
    import pixdesk.engine.decode_attention  # noqa: F401  (decode_attention, rope_cache_write)
    import pixdesk.engine.decode_norm  # noqa: F401  (add_rms_norm)


class StaticView:
    """KV view for the static step: writes row i at positions[i], reads keys [0, bucket) of every slot.

    `kernel`: the split-key Triton kernel (engine/decode_attention.py) reads the cache in place; otherwise
    the matmul form with a mask (CPU, or a GPU without Triton).
    """

    def __init__(self, cache: KVCache, positions: torch.Tensor, key_pos: torch.Tensor, kernel: bool = False):
        self.cache, self.positions, self.bucket, self.kernel = cache, positions, key_pos.shape[0], kernel
        self.rows = torch.arange(cache.n_slots, device=positions.device)
        if kernel:
            self.lengths = read_lengths(positions, cache.scratch_position)  # (n_slots,)
        else:
            self.mask = key_pos[None, :] <= positions[:, None]  # (n_slots, bucket)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        kc, vc = self.cache.k[layer], self.cache.v[layer]
        reads = self.lengths if self.kernel else self.mask
        return attend_slots(kc, vc, self.rows, self.positions, reads, self.bucket, self.kernel, q, k, v)


def read_lengths(positions: torch.Tensor, scratch: int) -> torch.Tensor:
    """Keys each slot's query reads in the kernel: up to its position, or one for an idle slot parked on the
    spare position `scratch` (reading the whole bucket there cost a full slot's attention per idle slot)."""
    return torch.where(positions == scratch, 1, positions + 1)


def attend_slots(kc, vc, rows, positions, reads, n_keys: int, kernel: bool, q, k, v) -> torch.Tensor:
    """Write row i's k, v at positions[i] of slot i, then attend over the first n_keys keys of each slot:
    `reads` is the kernel's lengths (n_slots,) or the matmul form's mask (n_slots, n_keys)."""
    kc[rows, positions] = k[:, 0]
    vc[rows, positions] = v[:, 0]
    if kernel:
        out = torch.ops.pixdesk.decode_attention(q[:, 0], kc, vc, reads, n_keys)  # (B, H, D)
        return out[:, None]
    return gqa_decode(q, kc[:, :n_keys], vc[:, :n_keys], reads)


def _decode_layer(layer, x, branch, cos, sin, kc, vc, rows, positions, reads, key_pos, kernel: bool):
    """One decoder layer of the static step with every input an argument (no layer index), so one compiled
    graph serves all layers (LAYER_REGIONS).

    The layer's last residual add is deferred to the next call: it takes the previous layer's residual
    stream and feed-forward branch and returns its own pair, the branch as the down projection's K-split
    partials (S, n_slots, dim). The region thus ends at the down projection's output, and the partials'
    sum and the add fuse into the next layer's RMSNorm (one kernel instead of a sum kernel and the norm).
    """
    n_keys = key_pos.shape[0]
    if kernel and hasattr(layer.attention, "wqkv"):
        return _kernel_layer(layer, x, branch, cos, sin, kc, vc, positions, reads, n_keys)
    x = x + sum_partials(branch, x.dtype)[:, None]
    attend = lambda q, k, v: attend_slots(kc, vc, rows, positions, reads, n_keys, kernel, q, k, v)  # noqa: E731
    h = x + layer.attention.output(attend(*layer.project(x, cos, sin)))
    ff = layer.feed_forward
    return h, linear_partials(ff.w2, ff.hidden(layer.ffn_norm(h)[:, 0]))


def _kernel_layer(layer, x, branch, cos, sin, kc, vc, positions, lengths, n_keys: int):
    """The layer on the decode kernels (CUDA): each residual add + RMSNorm one single-pass kernel
    (decode_norm.py; Inductor's own form is FUSED_NORM off), the q|k|v partials summed, rotated and written to
    the cache by one kernel (decode_attention.rope_cache_write; int4 at one slot: inside the projection's
    GEMV, int4_fused.py), then the decode-attention kernel over `lengths` keys a slot. Same contract as
    _decode_layer."""
    a, ff, B = layer.attention, layer.feed_forward, x.shape[0]
    an, fn = layer.attention_norm, layer.ffn_norm
    x, normed = _add_norm(x[:, 0], branch, an)
    q = _project_rotate_write(a, normed, cos.reshape(B, -1), sin.reshape(B, -1), kc, vc, positions)
    attended = torch.ops.pixdesk.decode_attention(q, kc, vc, lengths, n_keys)  # (B, H, D)
    h, normed = _add_norm(x, linear_partials(a.wo, attended.reshape(B, -1)), fn)
    return h[:, None], linear_partials(ff.w2, ff.hidden(normed))


def _project_rotate_write(attention, x, cos, sin, kc, vc, positions) -> torch.Tensor:
    """x (B, dim) -> rotated q (B, H, D); k rotated and v written to the cache at the rows' positions: the
    projection's own fused kernel where it has one (int4, one slot: quant.Int4Linear.qkv_rope), else the
    projection's partials, then rope_cache_write."""
    fused = getattr(attention.wqkv, "qkv_rope", None)
    q = fused(x, cos, sin, kc, vc, positions, attention.n_heads) if fused is not None else None
    if q is not None:
        return q
    parts = linear_partials(attention.wqkv, x)  # (S, B, (H + 2 Hkv) D)
    return torch.ops.pixdesk.rope_cache_write(parts, cos, sin, kc, vc, positions, attention.n_heads)


def _add_norm(x: torch.Tensor, parts: torch.Tensor, norm) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, dim) + the sum of a branch's partials (S, B, dim) -> (new residual, norm of it)."""
    if FUSED_NORM:
        return torch.ops.pixdesk.add_rms_norm(x, parts, norm.weight, norm.eps)
    h = x + sum_partials(parts, x.dtype)
    return h, norm(h)


def _prologue(model, tokens: torch.Tensor, positions: torch.Tensor, key_pos: torch.Tensor, kernel: bool,
              scratch: int):  # fmt: skip
    """The step's inputs -> embeddings, the rotation tables and the attention reads: for the kernel the keys
    each slot reads (up to its position; one for an idle slot parked on the spare position `scratch`), else
    the matmul form's mask."""
    t = model.args.text
    h = model.tok_embeddings(tokens[:, None])  # (n_slots, 1, dim); generated ids are plain text
    cos, sin = rope_tables(text_angles(positions[:, None], t.head_dim, t.rope_theta))
    reads = read_lengths(positions, scratch) if kernel else key_pos[None, :] <= positions[:, None]
    return h, cos, sin, reads


def _head(model, h: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """The last layer's pending residual add, the final norm and the LM head -> fp32 logits (n_slots, V)."""
    return model.logits(model.norm(h + sum_partials(branch, h.dtype)[:, None])[:, 0])


@functools.cache
def _compiled(fn):
    """One torch.compile wrapper per function, shared by every decoder (Dynamo caches by code object)."""
    return torch.compile(fn, fullgraph=True)


def key_bucket(longest: int, bucket_size: int, max_len: int) -> int:
    """Attention length covering positions < longest: a multiple of bucket_size, capped at max_len (never the
    cache's full length, max_len + 1: a full-length slice would specialize the graph)."""
    return min(-(-longest // bucket_size) * bucket_size, max_len)


def key_buckets(bucket_size: int, max_len: int) -> list[int]:
    """Every attention length a step can be captured at (key_bucket's values)."""
    ends = range(bucket_size, max_len + bucket_size, bucket_size)
    return sorted({key_bucket(b, bucket_size, max_len) for b in ends})


def warm_attention(model, cache: KVCache, bucket_size: int, row_counts, row_slots: bool) -> int:
    """Compile the decode-attention kernel variants of every key bucket for each row count now
    (decode_attention.warm_variants says why); returns the launches made."""
    from pixdesk.engine.decode_attention import warm_variants

    buckets, heads = key_buckets(bucket_size, cache.max_len), model.args.text.n_heads
    k, v = cache.k[0], cache.v[0]
    return sum(warm_variants(k, v, heads, rows, buckets, row_slots) for rows in row_counts)


def capture(fn, args: tuple, pool) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """Run `fn(*args)` twice on a side stream (compilation, kernel tuning, allocator warm-up), then capture
    one call into a CUDA graph using memory pool `pool`. Returns the graph and its output buffer."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn(*args)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn(*args)
    return graph, out


class StaticDecoder:
    def __init__(
        self,
        model,
        cache: KVCache,
        *,
        compile: bool | None = None,
        bucket_size: int = 512,
        kernel: bool | None = None,
        layer_regions: bool | None = None,
    ):
        self.model, self.cache, self.bucket_size = model, cache, bucket_size
        device = cache.device
        self.compile = device.type == "cuda" if compile is None else compile
        self.layer_regions = LAYER_REGIONS if layer_regions is None else layer_regions
        self.kernel = _kernel_available(device) if kernel is None else kernel
        if self.kernel:
            _register_kernels()
        # The step's inputs (token, position, output row order, token-from-picks flag) live in one device
        # buffer, filled from one pinned host buffer with one copy per step: no blocking transfers or small
        # kernels before the replay. The step ends with every slot's greedy pick (engine/slot_picks.py).
        n, pinned = cache.n_slots, device.type == "cuda"
        self._staging = torch.zeros(4, n, dtype=torch.long, pin_memory=pinned)
        self._io = torch.zeros(4, n, dtype=torch.long, device=device)
        self._copied = torch.cuda.Event() if pinned else None
        self.tokens, self.positions, self._rows, self._from_picks = self._io.unbind(0)
        self.slot_picks = SlotPicks(n, model.args.text.vocab_size, device)
        self._slot_rows = torch.arange(n, device=device)
        self.key_pos: dict[int, torch.Tensor] = {}
        self._fn = None
        self._zeros: torch.Tensor | None = None
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.use_graphs = self.compile and device.type == "cuda"
        self._pool = None

    def bucket(self, longest: int) -> int:
        """Attention length covering positions < longest, rounded up to a multiple of bucket_size."""
        return key_bucket(longest, self.bucket_size, self.cache.max_len)

    @property
    def steps(self) -> dict[int, torch.Tensor]:
        """The buckets used so far."""
        return self.key_pos

    def _step(self, tokens: torch.Tensor, positions: torch.Tensor, key_pos: torch.Tensor) -> torch.Tensor:
        """The whole step as one function, the model's forward (LAYER_REGIONS off: compiled whole)."""
        h = self.model.tok_embeddings(tokens[:, None])  # (n_slots, 1, dim); generated ids are plain text
        view = StaticView(self.cache, positions, key_pos, self.kernel)
        return self.model.logits(self.model(h, positions[:, None], view)[:, 0])  # (n_slots, V) fp32

    def _step_by_layer(self, tokens: torch.Tensor, positions: torch.Tensor, key_pos: torch.Tensor):
        """The step as three pieces (LAYER_REGIONS): prologue, one layer function per layer, head; compiled
        each when the decoder compiles."""
        m, rows, scratch = self.model, self._slot_rows, self.cache.scratch_position
        piece = _compiled if self.compile else (lambda fn: fn)
        h, cos, sin, reads = piece(_prologue)(m, tokens, positions, key_pos, self.kernel, scratch)
        branch = self._zero_branch()
        layer_fn, shared = piece(_decode_layer), (rows, positions, reads, key_pos, self.kernel)
        for layer, kc, vc in zip(m.layers, self.cache.k, self.cache.v):
            h, branch = layer_fn(layer, h, branch, cos, sin, kc, vc, *shared)
        return piece(_head)(m, h, branch)

    def _zero_branch(self) -> torch.Tensor:
        """Zeros shaped like a layer's feed-forward branch (the down projection's partials for n_slots rows):
        the first layer's pending add. Made once, by running that projection on zeros, outside the compiled
        pieces and before any graph capture (the first call of a step is a warm-up)."""
        if self._zeros is None:
            w2 = self.model.layers[0].feed_forward.w2
            dtype = self.model.tok_embeddings.weight.dtype
            hidden = torch.zeros(self.cache.n_slots, w2.in_features, dtype=dtype, device=self.cache.device)
            self._zeros = linear_partials(w2, hidden).zero_()
        return self._zeros

    @property
    def picks(self) -> torch.Tensor:
        """(n_slots,) ids: each slot row's greedy pick (logit bias applied) from the last step."""
        return self.slot_picks.picks

    def _picked_step(self, tokens: torch.Tensor, positions: torch.Tensor, key_pos: torch.Tensor):
        """What a step runs (and a graph captures): flagged rows' tokens from the last picks, the compiled
        step, this step's picks."""
        self.slot_picks.feed(tokens, self._from_picks)
        logits = self._function()(tokens, positions, key_pos)
        self.slot_picks.pick(logits)
        return logits

    def _function(self):
        if self._fn is None:
            if self.layer_regions:
                self._fn = self._step_by_layer
            elif self.compile:
                self._fn = torch.compile(self._step, fullgraph=True)
            else:
                self._fn = self._step
        return self._fn

    def _graph(self, bucket: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Capture the compiled step for this bucket once (after warm-up runs on a side stream)."""
        if bucket not in self.graphs:
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            # One memory pool for every bucket's graph: they never run at once, and the logits anyone reads
            # are copied out before the next replay, so a new bucket reuses memory instead of adding its own.
            args = (self.tokens, self.positions, self._key_pos(bucket))
            self.graphs[bucket] = capture(self._picked_step, args, self._pool)
        return self.graphs[bucket]

    def warm_attention(self) -> int:
        """The decode-attention kernel variants of every key bucket compiled now (module-level
        warm_attention); returns the launches made (0 without the kernel or graphs)."""
        if not (self.kernel and self.use_graphs):
            return 0
        return warm_attention(self.model, self.cache, self.bucket_size, [self.cache.n_slots], False)

    def _key_pos(self, bucket: int) -> torch.Tensor:
        if bucket not in self.key_pos:
            t = torch.arange(bucket, device=self.tokens.device)
            if self.compile:
                torch._dynamo.maybe_mark_dynamic(t, 0)
            self.key_pos[bucket] = t
        return self.key_pos[bucket]

    def step(self, slots: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """tokens (B,) at positions (B,) in slots (B,) -> fp32 logits (B, V) for those rows (`launch`)."""
        return self.launch(slots, tokens, positions)

    def launch(self, slots, tokens, positions, biases=None, *, logits: bool = True) -> torch.Tensor | None:
        """Queue one step: tokens (B,) at positions (B,) in slots (B,). Returns the fp32 logits (B, V) of
        those rows, copied out of the step's buffer (None with `logits` False: nothing copied); every slot
        row's greedy pick, biased by `biases[i]` (dicts or None) for slots[i], lands in `picks`. Reads
        nothing back.

        Host `tokens` travel with the positions through the pinned staging buffer. `tokens` that are this
        decoder's `picks` (the scheduler's pipelined decode) are flagged instead and taken from the buffer by
        the step itself, so no device->host trip and no extra device op separates two steps.
        """
        slots, positions = slots.cpu(), positions.cpu()
        if self._copied is not None:
            self._copied.synchronize()  # the previous step's copy has left the pinned buffer
        self.slot_picks.set_biases(slots.tolist(), biases or [None] * len(slots))
        staged = self._staging
        staged[0].zero_()
        staged[1].fill_(self.cache.scratch_position)
        staged[3].zero_()
        if tokens is self.picks:
            staged[3, slots] = 1
        else:
            staged[0, slots] = tokens.cpu()
        staged[1, slots] = positions
        staged[2, : len(slots)] = slots
        self._io.copy_(staged, non_blocking=True)
        if self._copied is not None:
            self._copied.record()
        bucket = self.bucket(int(positions.max()) + 1)
        if self.use_graphs:
            graph, out = self._graph(bucket)
            graph.replay()
        else:
            out = self._picked_step(self.tokens, self.positions, self._key_pos(bucket))
        # a copy: the next step overwrites the graph's output buffer
        return out.index_select(0, self._rows[: len(slots)]) if logits else None
