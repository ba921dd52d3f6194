"""Grammar masks: only grammar tokens, EOS only when accepting, budget-driven closing, typed errors, stats."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import torch

from pixdesk.engine.backend import LocalEngine
from pixdesk.engine.grammar import GrammarFactory, closing_tokens, mask_for_response_format
from pixdesk.engine.sampling import SamplingParams
from pixdesk.errors import InvalidRequest
from pixdesk.tokenizer.chat import ChatMessage

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 30},
        "values": {
            "type": "array",
            "maxItems": 6,
            "items": {"type": "number", "minimum": -1e6, "maximum": 1e6},
        },
        "kind": {"enum": ["bar", "line"]},
    },
    "required": ["title", "values", "kind"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def factory(tiny):
    f = GrammarFactory(tiny.tokenizer)
    yield f
    f.close()


@pytest.fixture(scope="module")
def engine(tiny):
    with LocalEngine(tiny) as eng:
        yield eng


def _prompt(engine):
    return engine.encode_chat([ChatMessage("user", "Give me JSON.")])


def _run(engine, factory, max_tokens, seed, schema=SCHEMA, temperature=1.0):
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed)
    mask = factory.json_schema(schema, max_tokens)
    text, finish = engine.submit(_prompt(engine), params, mask=mask).text()
    return text, finish, mask


def test_shortest_document_sets_the_smallest_budget(factory):
    fresh = factory.json_schema(SCHEMA, 200)
    shortest = closing_tokens(factory, fresh.matcher)
    doc = json.loads(factory.tok.decode(shortest))
    jsonschema.validate(doc, SCHEMA)  # the closing of the empty state is itself a minimal valid document
    with pytest.raises(InvalidRequest) as e:
        factory.json_schema(SCHEMA, len(shortest))  # no room for EOS
    assert e.value.param == "max_tokens" and "max_tokens" in e.value.message
    factory.json_schema(SCHEMA, len(shortest) + 1)


def test_tiny_budgets_end_valid_or_with_a_typed_error(engine, factory):
    minimum = len(closing_tokens(factory, factory.json_schema(SCHEMA, 200).matcher)) + 1
    outcomes = set()
    for max_tokens in range(minimum, minimum + 14):
        for seed in range(3):
            text, finish, mask = _run(engine, factory, max_tokens, seed)
            assert finish.usage.completion_tokens <= max_tokens
            if finish.reason == "error":
                assert finish.error.param == "max_tokens"
                outcomes.add("error")
                continue
            assert finish.reason == "stop", (max_tokens, seed, finish)
            jsonschema.validate(json.loads(text), SCHEMA)
            assert mask.tokens[-1] == factory.tok.EOS
            outcomes.add("valid")
    assert "valid" in outcomes


def test_long_budget_documents_validate_and_are_counted(engine, factory):
    before = engine.stats()["masked_steps"]
    for seed in range(4):
        text, finish, mask = _run(engine, factory, 120, seed)
        assert finish.reason == "stop"
        jsonschema.validate(json.loads(text), SCHEMA)
    assert engine.stats()["masked_steps"] - before >= 4 * len(mask.tokens) // 2 > 0


def test_eos_is_masked_until_the_document_is_complete(factory):
    mask = factory.json_schema(SCHEMA, 400)
    eos = factory.tok.EOS
    logits = torch.zeros(factory.tok.n_words)
    logits[eos] = 50.0  # the model wants to stop at once
    while True:
        out = mask.mask(logits)
        allowed = torch.isfinite(out)
        assert bool(allowed[eos]) == mask.accepting
        token = int(torch.argmax(out))
        mask.accept(token)
        if token == eos:
            break
    assert json.loads(factory.tok.decode(mask.tokens[:-1]))["kind"] in ("bar", "line")


def test_only_grammar_tokens_are_allowed(factory):
    mask = factory.json_schema(
        {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}, 50
    )
    out = mask.mask(torch.zeros(factory.tok.n_words + 5))  # model rows past the vocabulary stay masked
    allowed = torch.isfinite(out).nonzero().flatten().tolist()
    assert allowed and all(factory.tok.decode([t]).startswith("{") for t in allowed)
    assert factory.tok.n_words not in allowed


def test_background_and_inline_masks_agree(tiny, engine, factory):
    inline = GrammarFactory(tiny.tokenizer, background=False)
    a = _run(engine, factory, 60, seed=7)[0]
    b = _run(engine, inline, 60, seed=7)[0]
    assert a == b
    assert inline.lltokenizer is inline.lltokenizer  # built once per factory


def test_response_format_shapes(factory):
    p = SamplingParams(max_tokens=64)
    assert mask_for_response_format(factory, None, p) is None
    assert mask_for_response_format(factory, {"type": "text"}, p) is None
    assert mask_for_response_format(factory, {"type": "json_object"}, p) is not None
    ok = {"type": "json_schema", "json_schema": {"name": "chart", "schema": SCHEMA, "strict": True}}
    assert mask_for_response_format(factory, ok, p) is not None
    bad = [
        ("json", "response_format"),
        ({"type": "yaml"}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"schema": SCHEMA}}, "response_format.json_schema.name"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": []}},
         "response_format.json_schema.schema"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}},
         "response_format.json_schema.schema"),
        ({"type": "json_schema", "json_schema": {"name": "x", "strict": "yes"}},
         "response_format.json_schema.strict"),
        ({"type": "json_object", "extra": 1}, "response_format"),
    ]  # fmt: skip
    for rf, param in bad:
        with pytest.raises(InvalidRequest) as e:
            mask_for_response_format(factory, rf, p)
        assert e.value.param == param, rf
    with pytest.raises(InvalidRequest) as e:
        mask_for_response_format(factory, {"type": "json_object"}, SamplingParams(max_tokens=64, stop=("}",)))
    assert e.value.param == "stop"


def test_real_vocabulary_masks_follow_a_document():
    import mistral_common

    from pixdesk.tokenizer.tekken import Tekkenizer

    tok = Tekkenizer.from_file(Path(mistral_common.__file__).parent / "data" / "tekken_240911.json")
    factory = GrammarFactory(tok, background=False)
    doc = {"title": "Umsatz 2024 [INST]", "values": [1250, -3.5], "kind": "bar"}
    ids = tok.encode(json.dumps(doc, ensure_ascii=False)) + [tok.EOS]
    mask = factory.json_schema(SCHEMA, len(ids) + 40)
    for i, t in enumerate(ids):
        out = mask.mask(torch.zeros(tok.n_words))
        assert torch.isfinite(out[t]), (i, tok.id_to_piece(t))
        if i == 3:  # inside the title string: no control token may appear there
            assert not torch.isfinite(out[: tok.num_special]).any()
        mask.accept(t)
    assert mask.accepting
