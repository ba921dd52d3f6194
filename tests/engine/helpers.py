"""Shared helpers for engine tests: prompts with images, reference runs, comparisons."""

from __future__ import annotations

import threading

import torch

from pixdesk.engine.backend import LocalEngine
from pixdesk.engine.events import Delta, Finish
from pixdesk.engine.generate import generate
from pixdesk.engine.sampling import SamplingParams
from pixdesk.engine.scheduler_config import SchedulerConfig
from pixdesk.tokenizer.chat import ChatMessage, ImageChunk, TextChunk
from pixdesk.tokenizer.image import PreparedImage

TOL = 1e-4


def image(rows: int, cols: int, seed: int) -> PreparedImage:
    px = torch.randn(3, rows * 16, cols * 16, generator=torch.Generator().manual_seed(seed))
    return PreparedImage(px, rows, cols, f"img-{seed}-{rows}x{cols}", (cols * 16, rows * 16))


def user(*parts) -> ChatMessage:
    return ChatMessage(
        "user", [ImageChunk(p) if isinstance(p, PreparedImage) else TextChunk(p) for p in parts]
    )


def engine(tiny, **kw) -> LocalEngine:
    cfg = SchedulerConfig(**{"max_batch": 8, "max_context": 1024, "prefill_chunk": 64, **kw})
    return LocalEngine(tiny, cfg).start()


class Run:
    """Consume a submission in a thread, keeping tokens, logprobs and the finish."""

    def __init__(self, submission):
        self.sub, self.tokens, self.logprobs, self.text, self.finish = submission, [], [], "", None
        self.first_token = threading.Event()
        self.thread = threading.Thread(target=self._consume)
        self.thread.start()

    def _consume(self):
        for ev in self.sub:
            if isinstance(ev, Delta):
                self.tokens += ev.token_ids
                self.logprobs += ev.logprobs or []
                self.text += ev.text
                if ev.token_ids:
                    self.first_token.set()
            elif isinstance(ev, Finish):
                self.finish = ev

    def wait(self, timeout=120):
        self.thread.join(timeout)
        assert self.finish is not None, "request did not finish"
        return self


def reference(tiny, prompt, params: SamplingParams):
    """The same request alone, through the single-request driver."""
    tokens, lps = [], []
    for ev in generate(tiny.model, tiny.tokenizer, prompt, params):
        if isinstance(ev, Delta):
            tokens += ev.token_ids
            lps += ev.logprobs or []
    return tokens, lps


def assert_same_run(got_tokens, got_lps, ref_tokens, ref_lps):
    """Logprobs within tolerance; tokens identical until the first near-tie (top-2 margin <= 1e-4)."""
    for i, (a, b) in enumerate(zip(got_lps, ref_lps)):
        if a.token_id != b.token_id:
            top = sorted(b.top, key=lambda t: -t[2])
            assert len(top) >= 2 and top[0][2] - top[1][2] <= TOL, f"token {i} differs without a near-tie"
            return
        assert abs(a.logprob - b.logprob) <= TOL * max(1.0, abs(b.logprob)), i
    assert got_tokens == ref_tokens
