"""v3 tool encoding equals mistral_common token for token; constrained calls parse and validate; parsing."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import mistral_common
import pytest
import torch
from mistral_common.protocol.instruct.messages import (
    AssistantMessage,
    SystemMessage,
    ToolMessage,
    UserMessage,
)
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.protocol.instruct.tool_calls import Function, FunctionCall, Tool
from mistral_common.protocol.instruct.tool_calls import ToolCall as MToolCall
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from pixdesk.engine.backend import LocalEngine
from pixdesk.engine.grammar import GrammarFactory
from pixdesk.engine.sampling import SamplingParams
from pixdesk.errors import InvalidRequest
from pixdesk.tokenizer.chat import ChatMessage
from pixdesk.tokenizer.tekken import Tekkenizer
from pixdesk.tokenizer.tools import (
    AssistantToolCalls,
    ToolCall,
    ToolResult,
    ToolSpec,
    encode_with_tools,
    parse_tool_calls,
    parse_tools,
    tool_call_mask,
)

TEKKEN = Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "Stadt, z. B. Zürich", "maxLength": 24},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
SPECS = [ToolSpec("get_weather", "Forecast for a city", WEATHER), ToolSpec("now", "", {})]


@pytest.fixture(scope="module")
def toks():
    return MistralTokenizer.from_file(str(TEKKEN)), Tekkenizer.from_file(TEKKEN)


def _mistral_tools():
    return [
        Tool(function=Function(name=s.name, description=s.description, parameters=s.parameters))
        for s in SPECS
    ]


def _mcall(cid, name, args):
    return MToolCall(id=cid, function=FunctionCall(name=name, arguments=args))


CONVERSATIONS = {
    "definitions only": (
        [UserMessage(content="Weather in Oslo?")],
        [ChatMessage("user", "Weather in Oslo?")],
    ),
    "system, history, calls and results": (
        [SystemMessage(content="Be brief."), UserMessage(content="Weather in Oslo?"),
         AssistantMessage(tool_calls=[_mcall("abc123def", "get_weather", '{"city": "Oslo", "days": 2}')]),
         ToolMessage(tool_call_id="abc123def", content='{"temp": 7, "sky": "grå"}'),
         AssistantMessage(content="7 degrees. "), UserMessage(content="And Bergen, and the time?")],
        [ChatMessage("system", "Be brief."), ChatMessage("user", "Weather in Oslo?"),
         AssistantToolCalls([ToolCall("abc123def", "get_weather", '{"city": "Oslo", "days": 2}')]),
         ToolResult("abc123def", '{"temp": 7, "sky": "grå"}'),
         ChatMessage("assistant", "7 degrees. "), ChatMessage("user", "And Bergen, and the time?")],
    ),
    "parallel calls, plain and empty results, ends on a tool message": (
        [UserMessage(content="Bergen weather and the time"),
         AssistantMessage(tool_calls=[_mcall("xyz987uvw", "get_weather", '{"city":"Bergen","days":1}'),
                                      _mcall("qqq111www", "now", "")]),
         ToolMessage(tool_call_id="xyz987uvw", content="rainy"),
         ToolMessage(tool_call_id="qqq111www", content="")],
        [ChatMessage("user", "Bergen weather and the time"),
         AssistantToolCalls([ToolCall("xyz987uvw", "get_weather", '{"city":"Bergen","days":1}'),
                             ToolCall("qqq111www", "now", "")]),
         ToolResult("xyz987uvw", "rainy"), ToolResult("qqq111www", "")],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_encoding_matches_mistral_common(toks, name):
    mt, tok = toks
    theirs, ours = CONVERSATIONS[name]
    want = mt.encode_chat_completion(ChatCompletionRequest(messages=theirs, tools=_mistral_tools())).tokens
    got = encode_with_tools(tok, ours, SPECS).ids
    assert got == want
    assert got.count(tok.AVAILABLE_TOOLS) == 1


def test_without_tools_equals_plain_chat(toks):
    from pixdesk.tokenizer.chat import encode_instruct

    _, tok = toks
    msgs = [ChatMessage("system", "S"), ChatMessage("user", "Hi"), ChatMessage("assistant", "Yo"),
            ChatMessage("user", "Bye")]  # fmt: skip
    assert encode_with_tools(tok, msgs, None).ids == encode_instruct(tok, msgs).ids


def test_bad_conversations_are_refused(toks):
    _, tok = toks
    with pytest.raises(InvalidRequest):
        encode_with_tools(tok, [ChatMessage("user", "x"), ChatMessage("assistant", "done")], SPECS)
    with pytest.raises(InvalidRequest):
        encode_with_tools(tok, [ChatMessage("tool", "x")], SPECS)


def test_parse_tools_validates_openai_shapes():
    ok = parse_tools([{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}])
    assert ok[0].name == "get_weather" and ok[0].description == ""
    for bad in ([], [{"type": "function"}], [{"type": "function", "function": {"name": "has space"}}],
                [{"type": "function", "function": {"name": "f", "parameters": []}}],
                [{"type": "function", "function": {"name": "f"}}] * 2):  # fmt: skip
        with pytest.raises(InvalidRequest):
            parse_tools(bad)


def test_parse_tool_calls_from_model_text():
    calls = parse_tool_calls(
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}]', SPECS
    )
    assert calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "Oslo", "days": 2}
    assert len(calls[0].id) == 9 and calls[0].id.isalnum()
    assert calls[0].as_openai()["type"] == "function"
    single = parse_tool_calls(' {"name": "now", "arguments": {}}\n', SPECS)
    assert single[0].arguments == "{}"
    for bad in ('[{"name": "rm_rf", "arguments": {}}]', '[{"name": "now"}]', "[{", "42"):
        with pytest.raises(InvalidRequest):
            parse_tool_calls(bad, SPECS)


@pytest.fixture(scope="module")
def engine(tiny):
    with LocalEngine(tiny) as eng:
        yield eng


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_constrained_calls_parse_and_validate(tiny, engine, choice):
    factory = GrammarFactory(tiny.tokenizer)
    prompt = encode_with_tools(tiny.tokenizer, [ChatMessage("user", "Weather in Oslo for 3 days?")], SPECS)
    for seed in range(4):
        mask = tool_call_mask(factory, SPECS, choice, 120)
        params = SamplingParams(max_tokens=120, temperature=1.0, seed=seed)
        text, finish = engine.submit(prompt, params, mask=mask).text()
        assert finish.reason == "stop" and mask.called
        calls = parse_tool_calls(text, SPECS)
        for call in calls:
            spec = next(s for s in SPECS if s.name == call.name)
            jsonschema.validate(json.loads(call.arguments), spec.parameters or {"type": "object"})
        if isinstance(choice, dict):
            assert [c.name for c in calls] == ["get_weather"]


def test_auto_and_none_choices(tiny, engine):
    factory = GrammarFactory(tiny.tokenizer)
    prompt = encode_with_tools(tiny.tokenizer, [ChatMessage("user", "Hi")], SPECS)
    auto = tool_call_mask(factory, SPECS, "auto", 40)
    logits = torch.zeros(tiny.tokenizer.n_words)
    allowed = torch.isfinite(auto.mask(logits))
    assert allowed[tiny.tokenizer.TOOL_CALLS] and allowed[tiny.tokenizer.EOS] and allowed.sum() > 100
    assert not allowed[tiny.tokenizer.INST]
    none = tool_call_mask(factory, SPECS, "none", 40)
    assert not torch.isfinite(none.mask(logits)[tiny.tokenizer.TOOL_CALLS])
    text, finish = engine.submit(prompt, SamplingParams(max_tokens=20), mask=none).text()
    assert finish.reason in ("stop", "length")
    for bad in ("sometimes", {"type": "function", "function": {"name": "missing"}}):
        with pytest.raises(InvalidRequest):
            tool_call_mask(factory, SPECS, bad, 40)
