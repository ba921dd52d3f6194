from __future__ import annotations

import pytest

from pixdesk.weights.checkpoint import load_checkpoint
from pixdesk.weights.tiny import make_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The tiny random checkpoint (native layout, patch 16, vocab 2048)."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), layout="native", seed=0)


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    return load_checkpoint(tiny_dir)
