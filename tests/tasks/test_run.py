"""Tasks on the tiny random model: constrained chart/receipt answers validate as produced; the registry."""

from __future__ import annotations

import io
import json
import random

import jsonschema
import pytest
from PIL import Image

from pixdesk.engine.backend import LocalEngine
from pixdesk.engine.events import Delta
from pixdesk.engine.grammar import GrammarFactory
from pixdesk.errors import InvalidRequest
from pixdesk.tasks import TaskResult, registry, run_task, start_task, stream_task

N_IMAGES = 20


def _png(seed: int) -> bytes:
    rng = random.Random(seed)
    w, h = rng.randint(16, 80), rng.randint(16, 80)
    im = Image.frombytes("RGB", (w, h), bytes(rng.randrange(256) for _ in range(w * h * 3)))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def engine(tiny):
    with LocalEngine(tiny) as eng:
        yield eng


@pytest.fixture(scope="module")
def grammar(tiny):
    f = GrammarFactory(tiny.tokenizer)
    yield f
    f.close()


def test_registry_lists_every_task():
    assert set(registry) == {"ask", "html", "chart", "receipt"}
    for task in registry.values():
        assert task.info()["name"] == task.name and task.description and task.system_prompt
    assert registry["chart"].schema and registry["receipt"].schema and registry["html"].schema is None


@pytest.mark.parametrize("name", ["chart", "receipt"])
def test_structured_tasks_validate_without_repair(engine, grammar, name):
    before = engine.stats()["masked_steps"]
    runs = [
        start_task(
            engine, name, [_png(s)], {"max_tokens": 150, "temperature": 1.0, "seed": s}, grammar=grammar
        )
        for s in range(N_IMAGES)
    ]  # all submitted at once: the scheduler batches them
    schema = registry[name].schema
    for run in runs:
        text, finish = run.submission.text()
        assert finish.reason == "stop", finish
        jsonschema.validate(json.loads(text), schema)  # the raw model text, no extraction step
        result = run.result(text, finish)
        assert isinstance(result, TaskResult) and result.data is not None
        assert (
            "| " in result.rendered["markdown"]
            and result.rendered["csv"]
            and json.loads(result.rendered["json"])
        )
        assert not any("around its JSON" in w for w in result.warnings)
    assert engine.stats()["masked_steps"] - before >= N_IMAGES


def test_html_and_ask_run_and_stream(engine):
    r = run_task(engine, "html", [_png(1)], {"max_tokens": 16, "tailwind": True})
    assert r.finish_reason in ("stop", "length") and r.data["html"].startswith("<!DOCTYPE html>") == bool(
        r.data["html"]
    )
    assert (r.finish_reason == "length") == any("cut at max_tokens" in w for w in r.warnings)
    events = list(
        stream_task(engine, "ask", [_png(2), _png(3)], {"max_tokens": 8, "question": "What is shown?"})
    )
    assert isinstance(events[-1], TaskResult) and all(isinstance(e, Delta) for e in events[:-1])
    assert events[-1].rendered["markdown"] == events[-1].text.strip()


def test_task_errors_are_typed(engine, grammar):
    cases = [
        (("nope", [_png(0)], None), "task"),
        (("ask", [_png(0)], {"max_tokens": 4}), "options.question"),
        (("chart", [], None), "images"),
        (("chart", [_png(0)], {"colour": "red"}), "options"),
        (("receipt", [_png(0)], {"max_tokens": 5}), "max_tokens"),
    ]
    for args, param in cases:
        with pytest.raises(InvalidRequest) as e:
            run_task(engine, *args, grammar=grammar)
        assert e.value.param == param, args
