"""The worker thread that owns the device: queue -> admit -> chunked prefill + batched decode -> events.

Each loop iteration runs at most one prefill chunk (interactive requests first) and then one decode step
for every sequence that is decoding, so a new request prefills while others decode and a long prompt
never stalls the rest for more than one chunk. Batch requests may hold at most `max_batch -
reserved_interactive` slots, so an interactive question is admitted at once even behind a folder job.
A failure in one request (BaseException included) ends that request only.

Pipelined decode (`pipeline_decode`, static step only): when step n+1 is sure to be the step the plain
loop runs next (every row greedy and picked on the device, no logprobs, no prefill waiting, nobody at its
last allowed token), `_decode` launches it from step n's picks while they are still on the device, and
only then reads and accounts step n (`_collect`), so that bookkeeping overlaps the device's work. Step n+1
stays in flight into the next iteration. `_collect` drops the rows of sequences that ended meanwhile
(EOS, stop string, cancellation); engine/pipeline.py says why their KV writes harm nothing. A prefill
collects the step in flight first (`_drain`). Tokens, events, stage hooks and counters equal the plain
loop's; only a request admitted mid-decode makes the old sequences' steps split differently (`_drain`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import torch

from pixdesk.engine.answers import AnswerMemory
from pixdesk.engine.cache import KVCache
from pixdesk.engine.events import Finish, Usage
from pixdesk.engine.features import FeatureCache
from pixdesk.engine.generate import decode_step
from pixdesk.engine.pipeline import PendingStep, feed_position, launch_step, room_for_another
from pixdesk.engine.prefiller import Prefiller
from pixdesk.engine.prefix import PrefixCache, chain_keys
from pixdesk.engine.sampling import adjust_logits, sample_one
from pixdesk.engine.scheduler_config import SchedulerConfig, resolved
from pixdesk.engine.sequence import PRIORITIES, Sequence
from pixdesk.engine.static import StaticDecoder
from pixdesk.engine.stats import EngineStats
from pixdesk.errors import InternalError, Overloaded, PixdeskError

log = logging.getLogger("pixdesk.engine")
_PASS_THROUGH = (KeyboardInterrupt, SystemExit)
OOM_MESSAGE = (
    "out of device memory for this request; send fewer or smaller images (images.max_patches), a shorter "
    "prompt, or lower model.max_context / engine.max_batch"
)


class Scheduler:
    def __init__(self, model, config: SchedulerConfig):
        config = resolved(model, config)
        self.model, self.config = model, config
        self.kv = KVCache.for_model(model, config.max_batch, config.max_context)
        self.prefix = PrefixCache(self.kv, config.prefix_block, config.prefix_cache_bytes)
        self.features = FeatureCache(config.image_cache_bytes)
        self.answers = AnswerMemory()
        on_gpu = self.kv.device.type == "cuda"
        static = on_gpu if config.static_decode is None else config.static_decode
        self.decoder = StaticDecoder(model, self.kv, compile=config.compile) if static else None
        compiled = on_gpu if config.compile is None else config.compile
        kernel = static and self.decoder.kernel
        self.prefiller = Prefiller(model, self.kv, compiled=compiled, rows=static, kernel=kernel)
        self.stats = EngineStats()
        self._inflight: PendingStep | None = None  # a launched decode step not yet collected (pipelining)
        self._collected_at = 0.0  # perf_counter when the last step was collected
        self.queues: dict[str, deque[Sequence]] = {p: deque() for p in PRIORITIES}
        self.active: list[Sequence] = []
        self.free_slots = list(range(config.max_batch))[::-1]
        self.cond = threading.Condition()
        self.running = False
        self.thread: threading.Thread | None = None
        # Called at each stage (admit, prefill, decode, sample) in the worker: tests observe or inject faults.
        self.stage_hook: Callable[[str, Sequence], None] | None = None

    # ------------------------------------------------------------------------------ submit side

    def enqueue(self, seq: Sequence) -> None:
        with self.cond:
            waiting = sum(len(q) for q in self.queues.values())
            if waiting >= self.config.max_queue:
                self.stats.rejected += 1
                raise Overloaded(
                    f"{waiting} requests are waiting (engine.max_queue = {self.config.max_queue}); "
                    "retry shortly",
                    retry_after=self._retry_after(),
                )
            self.queues[seq.priority].append(seq)
            self.stats.submitted += 1
            self.cond.notify()

    def _retry_after(self) -> int:
        rate = self.stats.recent_requests_per_s()
        waiting = sum(len(q) for q in self.queues.values())
        return max(1, min(60, int(waiting / rate) if rate else 5))

    def wake(self) -> None:
        with self.cond:
            self.cond.notify()

    def start(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            return  # one worker owns the device
        self.running = True
        self.thread = threading.Thread(target=self._run, name="pixdesk-engine", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self.cond:
            self.running = False
            self.cond.notify()
        if self.thread:
            self.thread.join(timeout)
        for seq in [*self.active, *self.queues["interactive"], *self.queues["batch"]]:
            self._finish(seq, "cancelled")
        self._inflight = None  # its rows belonged to the sequences just cancelled

    # ------------------------------------------------------------------------------ worker

    def _run(self) -> None:
        while True:
            with self.cond:
                while self.running and not self._has_work():
                    self.cond.wait(timeout=1.0)
                if not self.running:
                    return
            self.run_once()

    def run_once(self) -> None:
        """One turn of the worker loop (tests call it without the thread, for a schedule they control)."""
        with self.cond:
            self._reap_cancelled()
            admitted = self._admit()
        with torch.inference_mode():  # the heavy part of admission runs outside the lock
            for seq in admitted:
                self._guarded(seq, "admit", lambda seq=seq: self._start(seq))
            self._iteration()

    def _has_work(self) -> bool:
        return bool(self.active) or any(self.queues.values())

    def _iteration(self) -> None:
        target = self._next_prefill()
        if target is not None:
            self._drain()  # the batch is about to grow: account the step in flight first
            self._guarded(target, "prefill", lambda: self._prefill_chunk(target))
        decoding = [s for s in self.active if s.decoding and s.pending is not None]
        if decoding:
            self._decode(decoding)

    def _reap_cancelled(self) -> None:
        for q in self.queues.values():
            for seq in [s for s in q if s.submission.cancelled]:
                q.remove(seq)
                self._finish(seq, "cancelled")
        for seq in [s for s in self.active if s.submission.cancelled]:
            self._finish(seq, "cancelled")

    def _admit(self) -> list[Sequence]:
        """Move queued sequences into free slots (interactive first); cheap, runs under the lock."""
        admitted = []
        for priority in PRIORITIES:
            q = self.queues[priority]
            for seq in list(q):
                if not self.free_slots or not self._may_admit(seq):
                    continue
                q.remove(seq)
                seq.slot = self.free_slots.pop()
                self.active.append(seq)
                admitted.append(seq)
        return admitted

    def _may_admit(self, seq: Sequence) -> bool:
        per_client = sum(1 for s in self.active if s.client_id == seq.client_id)
        if per_client >= self.config.per_client_active:
            return False
        if seq.priority == "batch":
            batch_active = sum(1 for s in self.active if s.priority == "batch")
            # At least one slot, or a single-slot engine would never run a batch request.
            return batch_active < max(1, self.config.max_batch - self.config.reserved_interactive)
        return True

    def _start(self, seq: Sequence) -> None:
        """Prefix-cache lookup and copy-in, vision features, embeddings: ready for chunked prefill."""
        self.prefiller.start(seq, self.prefix, self.features, self.stats)

    def _next_prefill(self) -> Sequence | None:
        waiting = [s for s in self.active if s.prefilled < s.n_prompt]
        waiting.sort(key=lambda s: (PRIORITIES.index(s.priority), s.t_submit))
        return waiting[0] if waiting else None

    def _prefill_chunk(self, seq: Sequence) -> None:
        lo = seq.prefilled - seq.start
        n = min(self._chunk_size(seq), seq.n_prompt - seq.prefilled)
        logits = self.prefiller.chunk(seq.slot, seq.embeds[lo : lo + n], seq.prefilled)
        seq.prefilled += n
        self.stats.prefill_chunks += 1
        self.stats.prefilled_tokens += n
        if seq.prefilled == seq.n_prompt:
            seq.embeds = None
            self._sample(seq, logits)

    def _chunk_size(self, seq: Sequence) -> int:
        """Short chunks keep other sequences' decode steps coming; with none decoding, fewer weight reads."""
        if any(s.decoding for s in self.active if s is not seq):
            return self.config.prefill_chunk
        return max(self.config.prefill_chunk, self.config.solo_prefill_chunk)

    def _decode(self, seqs: list[Sequence]) -> None:
        """One decode step for `seqs`: the step in flight, or a new one. Before reading its picks, launch the
        next step from them when that is safe (module docstring), so the device never waits for the host."""
        if self._inflight is not None:
            step = self._take_inflight()
        else:
            tokens, positions = torch.tensor([s.pending for s in seqs]), [feed_position(s) for s in seqs]
            step = self._isolated(seqs, lambda: self._launch(seqs, tokens, positions))
        if step is None:
            return  # nothing live in flight, or failed as a batch and redone one by one
        if self._may_pipeline(step, seqs):
            self._inflight = self._launch_next(step)
        self._collect(step)

    def _drain(self) -> None:
        step = self._take_inflight()
        if step is not None:
            self._collect(step)

    def _take_inflight(self) -> PendingStep | None:
        """The step in flight, its 'decode' hooks fired now for its live rows: where the plain loop fires
        them, on the same sequence state (it was launched before the previous step's picks were read)."""
        step, self._inflight = self._inflight, None
        live = [s for s in step.seqs if s in self.active] if step is not None else []
        return self._isolated(live, lambda: step) if live else None

    def _isolated(self, seqs: list[Sequence], launch: Callable[[], PendingStep]) -> PendingStep | None:
        """The 'decode' hooks, then `launch()`; if either fails, redo `seqs` one by one, so only the failing
        request ends."""
        try:
            if self.stage_hook:
                for s in seqs:
                    self.stage_hook("decode", s)
            return launch()
        except _PASS_THROUGH:
            raise
        except BaseException:
            log.exception("batched decode step failed; retrying its %d sequences one by one", len(seqs))
            for s in seqs:
                self._guarded(s, "decode", lambda s=s: self._decode_one(s))
            return None

    def _may_pipeline(self, step: PendingStep, seqs: list[Sequence]) -> bool:
        """Is the step after `step` sure to be the one the plain loop runs next, and inside the cache?"""
        return (
            self.config.pipeline_decode
            and self.decoder is not None
            and step.seqs == seqs  # none ended since `step` was launched
            and all(step.greedy)
            and not any(s.params.logprobs for s in seqs)  # their logits row would need the host
            and self._next_prefill() is None
            and all(room_for_another(s, p, self.kv.max_len) for s, p in zip(seqs, step.positions))
        )

    def _launch_next(self, step: PendingStep) -> PendingStep | None:
        """The step after `step`, fed with its picks still on the device. None if it failed: the next
        iteration then launches afresh, where a failure is isolated as usual."""
        try:
            positions = [p + 1 for p in step.positions]
            return self._launch(step.seqs, step.picks, positions, speculative=True)
        except _PASS_THROUGH:
            raise
        except BaseException:
            log.warning("pipelined decode launch failed; the next step runs unpipelined", exc_info=True)
            return None

    def _launch(self, seqs, tokens, positions, speculative=False) -> PendingStep:
        args = (self.model, self.kv, self.decoder, seqs, tokens, positions)
        return launch_step(*args, speculative=speculative)

    def _collect(self, step: PendingStep) -> None:
        """Read the step's picks, then sample, account and stream each row whose sequence is still active."""
        rows = [i for i, s in enumerate(step.seqs) if s in self.active]
        if not rows:
            return
        picks = step.host_picks()
        for i in rows:
            s = step.seqs[i]
            logits = step.logits[i] if step.logits is not None else None
            self._guarded(s, "sample", lambda s=s, i=i, lg=logits: self._sample(s, lg, picks[i]))
        now = time.perf_counter()
        # A pipelined step ran while the previous one was accounted: time it from that collection on.
        self.stats.record_decode_step(len(rows), now - max(step.t_start, self._collected_at))
        self.stats.pipelined_steps += step.speculative
        self.stats.decode_launch_seconds += step.launch_s
        self.stats.decode_wait_seconds += step.wait_s
        self._collected_at = now

    def _decode_one(self, seq: Sequence) -> None:
        if self.stage_hook:
            self.stage_hook("decode", seq)
        slot, token, position = (torch.tensor([v]) for v in (seq.slot, seq.pending, feed_position(seq)))
        logits = decode_step(self.model, self.kv, slot, token, position)[0]
        self.stats.record_decode_step(1)
        self._sample(seq, logits)

    def _sample(self, seq: Sequence, logits: torch.Tensor | None, pick: int | None = None) -> None:
        """Sample (or take the batch-computed greedy `pick`), then account and stream the token. `logits` is
        None only for a greedy pick without logprobs (the static step did not copy them out)."""
        if self.stage_hook:
            self.stage_hook("sample", seq)
        if pick is not None:
            token = pick
        else:
            adjusted = adjust_logits(logits, seq.params, seq.stream.counts)
            if seq.mask is not None:
                adjusted = seq.mask.mask(adjusted)
                self.stats.masked_steps += 1
            token = sample_one(adjusted, seq.params, seq.generator)
        if seq.mask is not None:
            seq.mask.accept(token)
        seq.generated.append(token)
        seq.pending = token
        if seq.t_first is None:
            seq.t_first = time.perf_counter()
            self.stats.record_ttft(seq.t_first - seq.t_submit)
        delta, reason = seq.stream.push(token, logits)
        self.stats.generated_tokens += 1
        if delta.text or delta.token_ids or delta.logprobs:
            seq.submission.put(delta)
        if reason:
            self._finish(seq, reason)

    # ------------------------------------------------------------------------------ endings

    def _guarded(self, seq: Sequence, stage: str, fn: Callable[[], None]) -> None:
        try:
            if stage in ("prefill", "admit") and self.stage_hook:
                self.stage_hook(stage, seq)
            fn()
        except _PASS_THROUGH:
            raise
        except PixdeskError as exc:
            self._finish(seq, "error", exc)
        except torch.OutOfMemoryError:
            log.error("request %s ran out of device memory during %s", seq.id, stage)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self._finish(seq, "error", InternalError(OOM_MESSAGE))
        except BaseException:  # a tokenizer panic fails this request only
            log.exception("request %s failed during %s", seq.id, stage)
            self._finish(seq, "error", InternalError("internal error while generating; see the daemon log"))

    def _remember(self, seq: Sequence) -> None:
        """Put the slot's KV (prompt and answer) into the prefix cache, so the next turn reuses it."""
        n = seq.kv_tokens
        keys = seq.token_keys + seq.generated[: max(0, n - seq.n_prompt)]
        chain = seq.block_keys + chain_keys(keys, self.prefix.block)[len(seq.block_keys) :]
        self.prefix.insert(chain, self.kv, seq.slot, n)

    def _finish(self, seq: Sequence, reason: str, error: PixdeskError | None = None) -> None:
        if seq in self.active:
            self.active.remove(seq)
            try:
                if reason != "error":  # the KV of a failed request is not trusted
                    self._remember(seq)
            finally:
                self.free_slots.append(seq.slot)
        if seq.match is not None:
            self.prefix.release(seq.match)
            seq.match = None
        seq.embeds = None
        if reason in ("stop", "length") and self.answers is not None:
            found = seq.stream.answer(seq.generated)
            if found:
                self.answers.remember(*found)
        usage = Usage(seq.n_prompt, len(seq.generated), seq.start)
        self.stats.record_finish(reason)
        seq.submission.put(Finish(reason, usage, error))
