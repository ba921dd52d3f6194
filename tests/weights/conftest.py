"""Random tiny checkpoints shared by the loader tests (tests/conftest.py has the loaded `tiny` model)."""

from __future__ import annotations

import pytest

from pixdesk.weights.tiny import TINY_ARGS, random_state_dict, write_checkpoint


@pytest.fixture(scope="module")
def state():
    return random_state_dict(TINY_ARGS, seed=3)


@pytest.fixture
def native(tmp_path, state):
    return write_checkpoint(tmp_path / "native", TINY_ARGS, state, layout="native")
