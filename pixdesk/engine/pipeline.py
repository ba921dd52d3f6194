"""A decode step in flight (launched on the device, its greedy picks on their way to the host), and why
letting one run ahead of the host's bookkeeping is safe.

Waiting. The scheduler (engine/scheduler.py) launches step n+1 from step n's picks while they are still
on the device, and only then waits for step n's picks. That wait must cover step n alone: `.tolist()` on
the device tensor would synchronize the whole stream, step n+1 included, and the host's bookkeeping would
again leave the device idle. So the picks are copied into pinned host memory behind the step, and the
host waits on an event recorded after that copy.

KV. Say step n gives a sequence its g-th token and ends it (EOS, a stop string) or a cancellation ends it
before step n+1 is collected. Step n+1 has already fed that token at position n_prompt + g - 1 of the
slot, which is `Sequence.kv_tokens`: the first position without valid KV (the last sampled token is never
fed). The prefix cache takes full blocks below `kv_tokens` only (`Scheduler._remember`), and its copy is
queued after step n+1 on the same stream, so it reads positions the step did not touch. (What the step
wrote there is that token's true KV anyway.) The slot's next owner copies its prefix in and prefills
positions from 0 before decoding, all queued after step n+1, and attention never reads a position at or
past the one it decodes at. No step is launched past a sequence's last allowed token, so a position never
reaches the cache's spare one (`max_len`, where the static step parks idle slots).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from pixdesk.engine.generate import decode_step
from pixdesk.engine.sampling import greedy_ids


def batch_greedy(seq) -> bool:
    """Greedy rows the batch picks with one argmax: no grammar mask, no penalties (a logit bias is fine)."""
    p = seq.params
    return p.temperature == 0 and seq.mask is None and not (p.frequency_penalty or p.presence_penalty)


def feed_position(seq) -> int:
    """Where a sequence's pending token goes: the last generated token was never fed."""
    return seq.n_prompt + len(seq.generated) - 1


def room_for_another(seq, position: int, max_len: int) -> bool:
    """After its pick from the step at `position`, may `seq` take one more step? Only with a token left to
    generate and a next position inside its slot (below the spare position `max_len`)."""
    return len(seq.generated) + 1 < seq.params.max_tokens and position + 1 < max_len


@dataclass(eq=False)
class PendingStep:
    seqs: list  # the sequences it covers, in row order
    positions: list[int]  # the KV position each row's input token went to
    logits: torch.Tensor | None  # (B, V) fp32 copies out of the step's buffer; None when no row needs them
    greedy: list[bool]  # rows picked on the device; the others are sampled on the host from `logits`
    picks: torch.Tensor | None  # ids on the device (logit bias applied); None when no row is greedy
    pick_rows: list[int]  # where row i's pick is in `picks`
    speculative: bool  # launched before the host had read the previous step's picks
    t_start: float  # perf_counter at launch
    launch_s: float = 0.0  # host time the launch took (step, pick and copy queued)
    wait_s: float = 0.0  # host time `host_picks` spent blocked on the device
    _host: torch.Tensor | None = None  # host copy of `picks` (pinned on CUDA)
    _ready: torch.cuda.Event | None = None  # recorded after that copy

    @classmethod
    def start(cls, seqs, positions, logits, greedy, picks, pick_rows, *, speculative, t_start) -> PendingStep:
        """Queue the copy of the greedy rows' `picks` to the host (none when no row is greedy)."""
        picks = picks if any(greedy) else None
        step = cls(seqs, positions, logits, greedy, picks, pick_rows, speculative, t_start)
        if picks is not None and picks.is_cuda:
            step._host = torch.empty(picks.shape, dtype=picks.dtype, pin_memory=True)
            step._host.copy_(picks, non_blocking=True)
            step._ready = torch.cuda.Event()
            step._ready.record()
        elif picks is not None:  # a static decoder's buffer: the next step overwrites it
            step._host = picks.clone()
        step.launch_s = time.perf_counter() - t_start
        return step

    def host_picks(self) -> list[int | None]:
        """The greedy rows' ids, None for the other rows; waits for this step only."""
        if self.picks is None:
            return [None] * len(self.seqs)
        t = time.perf_counter()
        if self._ready is not None:
            self._ready.synchronize()
        ids = self._host.tolist()
        self.wait_s += time.perf_counter() - t
        return [ids[r] if g else None for r, g in zip(self.pick_rows, self.greedy)]


def launch_step(model, kv, decoder, seqs, tokens, positions: list[int], *, speculative=False) -> PendingStep:
    """Run one decode step (the static `decoder`'s, or the per-request step when it is None) and queue the
    greedy rows' picks and their one device->host transfer. The static step picks inside itself
    (engine/slot_picks.py) and copies logits out only for rows that need them (sampled, or logprobs);
    the per-request step's logits get one argmax over the batch. Reads nothing back."""
    start = time.perf_counter()
    slot_ids = [s.slot for s in seqs]
    slots, pos = torch.tensor(slot_ids), torch.tensor(positions)
    biases = [s.params.logit_bias if batch_greedy(s) else None for s in seqs]
    greedy = [b is not None for b in biases]
    if decoder is not None:
        want_logits = not all(greedy) or any(s.params.logprobs for s in seqs)
        logits = decoder.launch(slots, tokens, pos, biases, logits=want_logits)
        picks, pick_rows = decoder.picks, slot_ids
    else:
        logits = decode_step(model, kv, slots, tokens, pos)
        picks, pick_rows = greedy_ids(logits, biases) if any(greedy) else None, list(range(len(seqs)))
    return PendingStep.start(seqs, positions, logits, greedy, picks, pick_rows, speculative=speculative,
                             t_start=start)  # fmt: skip
