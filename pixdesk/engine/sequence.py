"""One request's life inside the engine (Sequence) and the handle its submitter holds (Submission).

Events cross from the worker thread to the submitter through a thread-safe queue; a submitter inside an
asyncio loop gets them through `loop.call_soon_threadsafe`, so the event loop never blocks on the worker.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch

from pixdesk.engine.events import Delta, Event, Finish
from pixdesk.engine.generate import TokenStream
from pixdesk.engine.prefix import Match
from pixdesk.engine.sampling import SamplingParams
from pixdesk.tokenizer.chat import EncodedPrompt

PRIORITIES = ("interactive", "batch")
_ids = itertools.count(1)


class LogitMask(Protocol):
    """A per-request constraint (structured output): masks logits before sampling, follows each token."""

    def mask(self, logits: torch.Tensor) -> torch.Tensor: ...

    def accept(self, token: int) -> None: ...


class Submission:
    """The submitter's handle: iterate events (sync or async) and cancel."""

    def __init__(self, request_id: str, wake: callable):
        self.id = request_id
        self._wake = wake
        self._cancel = threading.Event()
        self._sync: queue.SimpleQueue[Event] = queue.SimpleQueue()
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            self._async: asyncio.Queue[Event] | None = asyncio.Queue()
        except RuntimeError:
            self._loop, self._async = None, None
        self.finish: Finish | None = None
        self.notes: list[str] = []  # what the engine changed about the request (e.g. images scaled down)

    # worker side
    def put(self, event: Event) -> None:
        if isinstance(event, Finish):
            self.finish = event
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._async.put_nowait, event)
            except RuntimeError:  # loop closed: the submitter is gone
                self._cancel.set()
        else:
            self._sync.put(event)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    # submitter side
    def cancel(self) -> None:
        self._cancel.set()
        self._wake()

    def __iter__(self) -> Iterator[Event]:
        if self._loop is not None:
            raise RuntimeError("submitted from an event loop: iterate with `async for`")
        while True:
            event = self._sync.get()
            yield event
            if isinstance(event, Finish):
                return

    async def __aiter__(self) -> AsyncIterator[Event]:
        if self._async is None:
            raise RuntimeError("submitted outside an event loop: iterate with `for`")
        while True:
            event = await self._async.get()
            yield event
            if isinstance(event, Finish):
                return

    def text(self) -> tuple[str, Finish]:
        """Collect a whole answer (sync submitters)."""
        parts = [e.text for e in self if isinstance(e, Delta)]
        return "".join(parts), self.finish


@dataclass(eq=False)
class Sequence:
    prompt: EncodedPrompt
    params: SamplingParams
    priority: str
    client_id: str
    submission: Submission
    stream: TokenStream
    generator: torch.Generator
    mask: LogitMask | None = None
    id: str = field(default_factory=lambda: f"req-{next(_ids)}")
    # scheduling state
    slot: int | None = None
    token_keys: object = field(default_factory=list)  # content keys of the prompt (prefix.TokenKeys)
    block_keys: list[bytes] = field(default_factory=list)  # prefix-cache chain over the prompt
    match: Match | None = None
    embeds: torch.Tensor | None = None  # prompt embeddings from `start` on
    start: int = 0  # first prompt position not served by the prefix cache
    prefilled: int = 0  # prompt positions whose KV is in the slot
    pending: int | None = None  # sampled token not yet fed through the model
    generated: list[int] = field(default_factory=list)
    t_submit: float = field(default_factory=time.perf_counter)
    t_first: float | None = None

    @property
    def n_prompt(self) -> int:
        return len(self.prompt.ids)

    @property
    def decoding(self) -> bool:
        return self.slot is not None and self.prefilled == self.n_prompt

    @property
    def kv_tokens(self) -> int:
        """Positions of the slot holding valid KV (the last sampled token was never fed)."""
        return self.prefilled + max(0, len(self.generated) - 1)
