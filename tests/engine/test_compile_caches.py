"""Where compiled kernels are cached across restarts (engine/backend.py pin_compile_caches)."""

from __future__ import annotations

import os
from pathlib import Path

from pixdesk.engine import backend


def test_triton_cache_is_pinned_next_to_inductors(monkeypatch, tmp_path):
    """Both set before anything compiles: Inductor would set TRITON_CACHE_DIR only when its first kernel
    loads, so our kernels compiled before and after that moment would be cached in two places."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    monkeypatch.setattr(backend, "_user_cache", lambda: tmp_path)
    backend.pin_compile_caches()
    assert Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]) == tmp_path / "inductor"
    assert Path(os.environ["TRITON_CACHE_DIR"]) == tmp_path / "inductor" / "triton"


def test_a_users_own_cache_dirs_are_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    backend.pin_compile_caches()
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "mine" / "triton")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "t"))
    backend.pin_compile_caches()
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "t")
