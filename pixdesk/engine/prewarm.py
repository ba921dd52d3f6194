"""Import the compiler stack on a background thread while the weights load.

On a GPU the engine compiles its decode step and prefill regions before it reports ready, and the first
thing that does is import Dynamo, Inductor and Triton: about a second of Python imports on the main thread
that has nothing else to do at that point. Loading the weights is mostly waiting on reader threads that
release the GIL (weights/stream.py), so the imports run beside it for free.
"""

from __future__ import annotations

import importlib
import logging
import threading

log = logging.getLogger(__name__)

COMPILER_MODULES = (
    "torch._dynamo",
    "torch._inductor.compile_fx",
    "triton",
    "pixdesk.engine.decode_attention",
    "pixdesk.model.regions",
)


def import_compiler_in_background(device) -> threading.Thread | None:
    """Start importing COMPILER_MODULES if `device` is a CUDA device (where the engine compiles); returns the
    thread (daemon; a module that fails to import is logged and left to fail where it is really used)."""
    if getattr(device, "type", str(device).split(":")[0]) != "cuda":
        return None
    thread = threading.Thread(target=_import_all, name="pixdesk-prewarm", daemon=True)
    thread.start()
    return thread


def _import_all() -> None:
    for name in COMPILER_MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a GPU box without Triton: the engine falls back where it checks
            log.debug("background import of %s failed: %s", name, exc)
