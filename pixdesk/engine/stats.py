"""Engine counters: what the worker did, for /metrics, benchmarks and tests."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field


@dataclass
class EngineStats:
    submitted: int = 0
    rejected: int = 0
    finished: Counter = field(default_factory=Counter)  # by finish reason
    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens served by the prefix cache
    prefilled_tokens: int = 0  # prompt tokens that went through the model
    generated_tokens: int = 0
    prefill_chunks: int = 0
    decode_steps: int = 0
    pipelined_steps: int = 0  # decode steps launched before the previous step's picks were read
    decode_launch_seconds: float = 0.0  # host time launching batched steps (static step: queueing its graph)
    decode_wait_seconds: float = 0.0  # host time blocked on the device for batched steps' picks
    seqs_per_step: Counter = field(default_factory=Counter)  # batch size -> decode steps
    decode_seconds: Counter = field(default_factory=Counter)  # batch size -> seconds in those steps
    vision_calls: int = 0  # images encoded (feature-cache misses)
    masked_steps: int = 0  # sampling steps under a structured-output mask
    ttft_s: deque = field(default_factory=lambda: deque(maxlen=1000))
    started: float = field(default_factory=time.monotonic)
    _finish_times: deque = field(default_factory=lambda: deque(maxlen=200))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record_decode_step(self, batch: int, seconds: float = 0.0) -> None:
        self.decode_steps += 1
        self.seqs_per_step[batch] += 1
        self.decode_seconds[batch] += seconds

    def decode_tok_s(self, batch: int) -> float | None:
        """Tokens per second over the decode steps that ran exactly `batch` sequences."""
        t = self.decode_seconds.get(batch)
        return batch * self.seqs_per_step[batch] / t if t else None

    def record_ttft(self, seconds: float) -> None:
        self.ttft_s.append(seconds)

    def record_finish(self, reason: str) -> None:
        with self._lock:
            self.finished[reason] += 1
            self._finish_times.append(time.monotonic())

    def recent_requests_per_s(self) -> float:
        with self._lock:
            times = list(self._finish_times)
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / max(times[-1] - times[0], 1e-6)

    @property
    def max_seqs_per_step(self) -> int:
        return max(self.seqs_per_step, default=0)

    def snapshot(self) -> dict:
        elapsed = time.monotonic() - self.started
        ttft = sorted(self.ttft_s)
        return {
            "submitted": self.submitted,
            "rejected": self.rejected,
            "finished": dict(self.finished),
            "prompt_tokens": self.prompt_tokens,
            "reused_tokens": self.reused_tokens,
            "prefilled_tokens": self.prefilled_tokens,
            "generated_tokens": self.generated_tokens,
            "tokens_per_s": self.generated_tokens / elapsed if elapsed else 0.0,
            "prefill_chunks": self.prefill_chunks,
            "decode_steps": self.decode_steps,
            "pipelined_steps": self.pipelined_steps,
            "decode_launch_s": self.decode_launch_seconds,
            "decode_wait_s": self.decode_wait_seconds,
            "seqs_per_decode_step": dict(self.seqs_per_step),
            "decode_tok_s_by_batch": {b: self.decode_tok_s(b) for b in self.seqs_per_step},
            "mean_seqs_per_decode_step": (
                sum(k * v for k, v in self.seqs_per_step.items()) / self.decode_steps
                if self.decode_steps
                else 0.0
            ),
            "vision_calls": self.vision_calls,
            "masked_steps": self.masked_steps,
            "ttft_p50_s": ttft[len(ttft) // 2] if ttft else None,
        }
