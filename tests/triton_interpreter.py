"""Running Triton kernels in Triton's interpreter on the CPU (a subprocess, since TRITON_INTERPRET is read at
import), and when that cannot run in this environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_in_interpreter(code: str, timeout: float = 300) -> str:
    """Run `code` with TRITON_INTERPRET=1 in a fresh interpreter: skips without Triton or where its
    interpreter cannot run, fails with the child's stderr, returns its stdout."""
    pytest.importorskip("triton")
    if reason := interpreter_skip_reason():
        pytest.skip(reason)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", code]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def interpreter_skip_reason() -> str | None:
    """Triton 3.6's interpreter turns a runtime loop bound into an int through a 1-element array, which numpy
    >= 2.4 refuses (triton-lang/triton#9171, fixed after 3.6); constraints.txt keeps numpy below 2.4 for dev
    and CI, so this only skips elsewhere (the GPU machine's environment)."""
    import numpy
    import triton

    def version(v: str) -> tuple[int, int]:
        return tuple(int(p) for p in v.split(".")[:2])  # type: ignore[return-value]

    if version(numpy.__version__) >= (2, 4) and version(triton.__version__) <= (3, 6):
        return f"Triton {triton.__version__}'s interpreter fails with numpy {numpy.__version__} (triton#9171)"
    return None
