"""The model as the server sees it: loading (with progress), ready, or failed.

The daemon starts listening first and loads the checkpoint in a background thread, so `/health` can report
progress and requests that arrive meanwhile wait (bounded by server.load_wait_s) instead of failing.
Loading has two phases: "weights" (progress 0..1) and then "warm-up" (on a GPU the engine compiles and
captures its steps before it reports ready: seconds with a warm compile cache, about a minute on a first
start), so a client does not read a long wait at 100% as a hang.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from pixdesk.engine.backend import Engine
from pixdesk.errors import ModelLoading, ModelUnavailable, PixdeskError

log = logging.getLogger("pixdesk.server")

Progress = Callable[[float], None]  # fraction 0..1


class Loader(Protocol):
    def __call__(self, progress: Progress) -> Engine: ...


class ModelSlot:
    """Holds the engine once it exists. Thread-safe: the loader thread reports, the event loop reads."""

    def __init__(self, engine_or_loader: Engine | Loader):
        self.engine: Engine | None = None
        self.loader: Loader | None = None
        self.owned = False  # the slot loaded the engine itself, so it also stops it
        self.progress = 0.0
        self.phase = "weights"  # then "warm-up" (see the module doc)
        self.error: str | None = None
        self._ready = threading.Event()
        if hasattr(engine_or_loader, "submit"):
            self.engine = engine_or_loader
            self.progress = 1.0
            self._ready.set()
        else:
            self.loader = engine_or_loader

    @property
    def demo(self) -> bool | None:
        """Whether the model is the built-in demo checkpoint (None while unknown)."""
        if self.engine is not None:
            return bool(self.engine.info.demo)
        return getattr(self.loader, "demo", None)

    @property
    def state(self) -> str:
        if self.engine is not None:
            return "ready"
        return "failed" if self.error else "loading"

    def start_loading(self) -> None:
        if self.loader is not None and self.engine is None:
            threading.Thread(target=self._load, name="pixdesk-load", daemon=True).start()

    def _load(self) -> None:
        start = time.perf_counter()
        try:
            engine = self.loader(self._report)
            start_engine = getattr(engine, "start", None)
            if callable(start_engine):
                self.progress, self.phase = 1.0, "warm-up"
                start_engine()
            self.engine, self.owned, self.progress = engine, True, 1.0
            log.info("model ready in %.1f s", time.perf_counter() - start)
        except PixdeskError as exc:
            self.error = exc.message
            log.error("model failed to load: %s", exc.message)
        except Exception as exc:  # noqa: BLE001 - any loader failure leaves the daemon up, reporting it
            self.error = type(exc).__name__
            log.exception("model failed to load")
        finally:
            self._ready.set()

    def _report(self, fraction: float) -> None:
        self.progress = min(max(float(fraction), 0.0), 1.0)

    async def get(self, wait_s: float) -> Engine:
        """The engine, waiting up to `wait_s` while it loads; else 503 model_loading / model_unavailable."""
        if not self._ready.is_set():
            deadline = time.monotonic() + wait_s
            while not self._ready.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(min(0.05, max(deadline - time.monotonic(), 0)))
        if self.engine is not None:
            return self.engine
        if self.error:
            raise ModelUnavailable(
                f"the model failed to load ({self.error}); see the daemon log and restart it"
            )
        doing = "compiling and warming up" if self.phase == "warm-up" else f"{100 * self.progress:.0f}%"
        raise ModelLoading(
            f"the model is still loading ({doing}); retry shortly "
            f"(requests wait up to server.load_wait_s = {wait_s:g} s)",
            retry_after=5,
        )

    def stop(self) -> None:
        if self.owned and self.engine is not None:
            stop = getattr(self.engine, "stop", None)
            if callable(stop):
                stop()
