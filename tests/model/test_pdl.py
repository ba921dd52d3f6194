"""When the decode kernels use programmatic dependent launch (model/pdl.py)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
from pixdesk.model import pdl  # noqa: E402


def test_never_on_the_cpu():
    assert not pdl.enabled(torch.device("cpu"))
    assert pdl.launch(False) == {} and pdl.launch(True) == {"launch_pdl": True}


@pytest.mark.parametrize(
    "capability, cuda, expected",
    [((9, 0), "12.4", True), ((9, 0), "13.0", True), ((8, 9), "12.8", False), ((9, 0), "12.1", False),
     ((10, 0), None, False)],
)  # fmt: skip
def test_hopper_or_later_with_a_cuda_build_that_captures_it(monkeypatch, capability, cuda, expected):
    pdl._capable.cache_clear()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: capability)
    monkeypatch.setattr(torch.version, "cuda", cuda)
    try:
        assert pdl._capable(0) is expected
    finally:
        pdl._capable.cache_clear()
