"""Greedy picks inside the static decode step, and the next step fed from them on the device.

Picked outside the step, a greedy decode step at batch 1 ended in ~8 small device operations between two
graph replays (the logits copied out of the graph's buffer, a copy biased, the bias values uploaded and
scattered, the argmax, the picked ids written into the next step's input): ~0.1-0.2 ms of a 3.1 ms int4 step
on an H200 (bench/NOTES.md, session 11). Here the step itself ends with the argmax over logits + a dense
logit-bias row per slot, written into a fixed `picks` buffer, and the next step's prologue takes its input
token from that buffer for the rows flagged to. Between two replays the device then runs one host->device
copy (the step's inputs) and one device->host copy (the picks).

A slot's bias row is rewritten only when the sequence in it asks for a different bias (a new request), so
steady decode uploads nothing. The picks equal `sampling.greedy_ids`: the same fp32 add (x + 0 = x on rows
and ids without a bias) and the same first-maximum argmax.
"""

from __future__ import annotations

import torch

from pixdesk.engine.sampling import to_device


class SlotPicks:
    """The picks buffer (n_slots,) and the dense logit-bias rows (n_slots, V) of a static decoder."""

    def __init__(self, n_slots: int, vocab_size: int, device: torch.device):
        self.picks = torch.zeros(n_slots, dtype=torch.long, device=device)
        self.bias = torch.zeros(n_slots, vocab_size, dtype=torch.float32, device=device)
        self._bias_of: list[dict[int, float]] = [{} for _ in range(n_slots)]

    def set_biases(self, slots: list[int], biases: list[dict[int, float] | None]) -> None:
        """Make slot `slots[i]`'s bias row `biases[i]` (None or {}: no bias); queued on the current stream,
        so a step launched after this reads the new rows."""
        for slot, bias in zip(slots, biases):
            bias = bias or {}
            if bias == self._bias_of[slot]:
                continue
            row = self.bias[slot]
            row.zero_()
            if bias:
                ids = to_device(list(bias), torch.long, row.device)
                row.index_put_((ids,), to_device(list(bias.values()), row.dtype, row.device), accumulate=True)
            self._bias_of[slot] = dict(bias)

    def feed(self, tokens: torch.Tensor, from_picks: torch.Tensor) -> None:
        """In the step, before the model: rows with `from_picks` != 0 take their token from the last picks,
        and the flags clear. So the step is idempotent: run again (a graph capture's warm-up runs do that,
        when a new attention bucket is captured in the middle of pipelined decode) it reads the same tokens,
        not the picks the first run just wrote."""
        torch.where(from_picks != 0, self.picks, tokens, out=tokens)
        from_picks.zero_()

    def pick(self, logits: torch.Tensor) -> None:
        """In the step, after the model: each row's greedy id of fp32 `logits` (n_slots, V) + its bias."""
        torch.argmax(logits + self.bias, dim=-1, out=self.picks)
