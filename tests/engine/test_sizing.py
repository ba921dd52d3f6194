"""max_context = "auto": the KV slots fit the free device memory; too little memory is a clear error."""

from __future__ import annotations

import types

import pytest
import torch

from bench.gpu_model import PIXTRAL_12B
from pixdesk.config import load_settings
from pixdesk.engine import sizing
from pixdesk.engine.scheduler_config import SchedulerConfig
from pixdesk.engine.sizing import CPU_CONTEXT, auto_max_context, kv_bytes_per_token, resolve_max_context
from pixdesk.errors import InvalidConfig
from pixdesk.model.pixtral import Pixtral

from .helpers import engine


def _meta_12b():
    with torch.device("meta"):
        return Pixtral(PIXTRAL_12B).to(torch.bfloat16)


def test_pixtral_12b_kv_cost_and_the_docstring_example():
    model = _meta_12b()
    assert kv_bytes_per_token(model) == 160 * 1024  # 40 layers x K,V x 8 heads x 128 x bf16
    ctx = auto_max_context(model, 4, free_bytes=54 * 10**9, reserved_bytes=3 * 10**9 + 256 * 2**20)
    assert ctx % 256 == 0 and 4 * ctx * 160 * 1024 <= 54 * 10**9 - 3 * 10**9
    assert 4 * (ctx + 256) * 160 * 1024 > 54 * 10**9 - 3 * 10**9 - 256 * 2**20  # the largest that fits
    assert auto_max_context(model, 1, free_bytes=10**12, reserved_bytes=0) == 128_000  # trained context cap


@pytest.mark.parametrize("gib, chunk", [(141, 8192), (80, 8192), (24, 4096), (12, 2048), (4, 2048)])
def test_a_lone_prompts_chunk_grows_with_the_card(monkeypatch, gib, chunk):
    """solo_prefill_chunk = 0 ("auto"): the largest of 8,192 / 4,096 / 2,048 whose activations (Pixtral-12B:
    232 KiB a token) take at most 1/16 of the card; a set value wins; a CPU takes 2,048."""
    meta = _meta_12b()
    gpu = types.SimpleNamespace(device=torch.device("cuda", 0), args=meta.args, dtype=meta.dtype)
    monkeypatch.setattr(sizing, "total_device_bytes", lambda _device: gib * 2**30)
    assert sizing.chunk_bytes_per_token(meta) == 2 * (6 * 5120 + 2 * 14336) * 2
    assert sizing.resolve_solo_chunk(gpu, SchedulerConfig()) == chunk
    assert sizing.resolve_solo_chunk(gpu, SchedulerConfig(solo_prefill_chunk=1024)) == 1024
    assert sizing.resolve_solo_chunk(meta, SchedulerConfig()) == 2048  # not a GPU


def test_too_little_memory_names_the_settings_to_change():
    with pytest.raises(InvalidConfig) as exc:
        auto_max_context(_meta_12b(), 8, free_bytes=2 * 2**30, reserved_bytes=2**30)
    assert "engine.max_batch" in exc.value.message and exc.value.param == "model.max_context"


def test_auto_on_the_cpu_and_through_the_engine(tiny, tmp_path):
    assert resolve_max_context(tiny.model, SchedulerConfig(max_context=0)) == CPU_CONTEXT
    assert resolve_max_context(tiny.model, SchedulerConfig(max_context=300)) == 300
    with engine(tiny, max_context=0) as eng:
        assert eng.info.context == CPU_CONTEXT and eng.scheduler.kv.max_len == CPU_CONTEXT


def test_config_spelling(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text('[model]\nmax_context = "auto"\n')
    assert load_settings(cfg, env={}).model.max_context == 0
    assert load_settings(cfg, env={"PIXDESK_MODEL_MAX_CONTEXT": "4096"}).model.max_context == 4096
    cfg.write_text('[model]\nmax_context = "huge"\n')
    with pytest.raises(InvalidConfig):
        load_settings(cfg, env={})
