"""The static decode step's inputs and greedy picks through pinned host memory read and written by the step's
own kernels (CUDA graphs), so no copy engine sits between two steps.

With a host->device copy of the step's inputs before each replay and a device->host copy of its picks after
it, the stream alternated compute and copy engines, and each hand-over left the GPU idle: on an H200 at int4
b1 (bench/engine_gaps.py --gap-us 1, session 15) 5.6 us from the step's last kernel to the picks' copy, 11.5
from that copy to the next inputs' copy, 9.5 from there to the next step's first kernel, ~30 us of a 2.95 ms
step with the copies themselves. Here the graph's first kernel reads the inputs from pinned memory (mapped
into the GPU's address space: every cudaHostAlloc block is, under unified addressing) and its last kernel
writes the picks there.

The host's side, step k:
- `stage(k, ...)` writes the inputs with their sequence number k. The buffer is the one step k-1's first
  kernel read, so it first waits until that kernel has reported k-1 consumed (a word the kernel writes to
  pinned memory; step k-1 is running or about to by then, so the wait is short).
- After the replay, `launched(k)` records an event. The picks land in one of two pinned rows (k % 2), so
  step k+1 cannot overwrite them before the host reads them; step k+2 could, so staging step k+2 first
  saves step k's picks if nobody has read them yet.
- `picks(k)` waits for step k's event and returns its picks.
Warm-up runs before a capture re-run the same staged step, which reads and reports the same inputs.
"""

from __future__ import annotations

import time

import torch
import triton
import triton.language as tl

INPUT_ROWS = 4  # token, position, output row order, token-from-picks flag (static.StaticDecoder's io rows)


@triton.jit
def _load_inputs(staged_ptr, io_ptr, seq_ptr, consumed_ptr, N: tl.constexpr, ROWS: tl.constexpr,
                 BLOCK: tl.constexpr):  # fmt: skip
    """staged (ROWS + 1, N) int64 in pinned memory -> io (ROWS, N) on the device; the last row's first word
    is the step's sequence number: kept on the device for the picks, reported as consumed."""
    offs = tl.arange(0, BLOCK)
    ok = offs < ROWS * N
    tl.store(io_ptr + offs, tl.load(staged_ptr + offs, mask=ok, cache_modifier=".cv"), mask=ok)
    seq = tl.load(staged_ptr + ROWS * N, cache_modifier=".cv")
    tl.store(seq_ptr, seq)
    tl.debug_barrier()  # every input read before the host may overwrite them
    tl.store(consumed_ptr, seq)


@triton.jit
def _store_picks(picks_ptr, seq_ptr, host_ptr, N: tl.constexpr, BLOCK: tl.constexpr):
    """The step's picks (N,) -> pinned row seq % 2 of host (2, N)."""
    offs = tl.arange(0, BLOCK)
    ok = offs < N
    row = tl.load(seq_ptr) % 2
    tl.store(host_ptr + row * N + offs, tl.load(picks_ptr + offs, mask=ok), mask=ok)


class StepIO:
    """Pinned staging and picks of a static decoder with n_slots rows, and the two kernels that use them."""

    def __init__(self, n_slots: int, device: torch.device):
        self.n, self.device = n_slots, device
        pinned = device.type == "cuda"  # else Triton's interpreter on the CPU (tests): plain host memory
        self.staged = torch.zeros(INPUT_ROWS + 1, n_slots, dtype=torch.long, pin_memory=pinned)
        self.host_picks = torch.zeros(2, n_slots, dtype=torch.long, pin_memory=pinned)
        self.consumed = torch.full((1,), -1, dtype=torch.long, pin_memory=pinned)
        self.seq = torch.zeros(1, dtype=torch.long, device=device)  # the running step's number
        self.step = -1  # the last step staged
        self._events: dict[int, torch.cuda.Event | None] = {}  # step -> recorded after its replay
        self._saved: dict[int, list[int]] = {}  # picks read out before a later step overwrote their row
        self._read: set[int] = set()

    @property
    def inputs(self) -> torch.Tensor:
        """The host-side input rows (INPUT_ROWS, n) to fill for the next `stage`."""
        return self.staged[:INPUT_ROWS]

    def begin(self) -> int:
        """Before filling `inputs` for a new step: wait until the last staged step's first kernel has read
        its inputs, keep the picks the new step's row would overwrite; returns the new step's number."""
        k = self.step + 1
        if self.step >= 0:
            self._wait_consumed(self.step)
        self._keep_unread(k - 2)
        return k

    def stage(self, k: int) -> None:
        """The inputs filled for step k (`begin`'s number): mark them with it."""
        self.staged[INPUT_ROWS, 0] = k
        self.step = k

    def load(self, io: torch.Tensor) -> None:
        """In the step, first: the staged inputs into io (INPUT_ROWS, n) on the device."""
        block = triton.next_power_of_2(INPUT_ROWS * self.n)
        _load_inputs[(1,)](self.staged, io, self.seq, self.consumed, N=self.n, ROWS=INPUT_ROWS, BLOCK=block,
                           num_warps=1)  # fmt: skip

    def store(self, picks: torch.Tensor) -> None:
        """In the step, last: its picks (n,) into the pinned row of its number."""
        block = triton.next_power_of_2(self.n)
        _store_picks[(1,)](picks, self.seq, self.host_picks, N=self.n, BLOCK=block, num_warps=1)

    def launched(self, k: int) -> None:
        """After step k's replay: the event its picks wait on (none on the CPU, where it has run)."""
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        self._events[k] = event

    def picks(self, k: int) -> list[int]:
        """Step k's picks (one per slot row), waiting for that step only."""
        if k in self._saved:
            return self._saved.pop(k)
        if self._events[k] is not None:
            self._events[k].synchronize()
        self._read.add(k)
        return self.host_picks[k % 2].tolist()

    def _keep_unread(self, k: int) -> None:
        """Step k's picks row is about to be reused: copy them out unless they were read."""
        if k < 0 or k not in self._events:
            return
        event = self._events.pop(k)
        if k in self._read:
            self._read.discard(k)
            return
        if event is not None:
            event.synchronize()
        self._saved[k] = self.host_picks[k % 2].tolist()
        for old in [s for s in self._saved if s < k - 8]:  # picks nobody will ask for (their rows ended)
            del self._saved[old]

    def _wait_consumed(self, k: int) -> None:
        """Spin (releasing the GIL) until step k's first kernel has read its inputs; if its replay has
        already completed, it has."""
        event = self._events.get(k)
        while int(self.consumed[0]) < k:
            if event is None or event.query():
                return
            time.sleep(0)
