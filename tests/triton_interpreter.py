"""When the tests that run Triton kernels in its interpreter (CPU) cannot run in this environment."""

from __future__ import annotations


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
