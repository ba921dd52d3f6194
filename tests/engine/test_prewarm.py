"""The compiler imports that run beside the weight load (engine/prewarm.py)."""

from __future__ import annotations

import sys

import torch

from pixdesk.engine.prewarm import COMPILER_MODULES, import_compiler_in_background


def test_nothing_starts_for_a_cpu_device():
    assert import_compiler_in_background(torch.device("cpu")) is None
    assert import_compiler_in_background("cpu") is None


def test_a_cuda_device_imports_the_compiler_modules_on_a_thread():
    thread = import_compiler_in_background("cuda:0")  # only a name here: nothing touches a GPU
    assert thread is not None and thread.daemon
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert "torch._dynamo" in sys.modules and "pixdesk.model.regions" in sys.modules
    assert len(COMPILER_MODULES) >= 3
