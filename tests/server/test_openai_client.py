"""The official `openai` client against the real server: plain, streamed, images, system, logprobs,
json_schema and a tool call. The tiny model's words are random, so tests check shapes, counts and ids."""

from __future__ import annotations

import json

import openai
import pytest

from tests.server.conftest import data_uri, png


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key=live.key, max_retries=0, timeout=60)


def _user(*parts):
    return [
        {
            "role": "user",
            "content": list(parts) if len(parts) != 1 or not isinstance(parts[0], str) else parts[0],
        }
    ]


def test_non_streaming_answer_has_usage_and_echoes_the_model(client, live):
    before = live.engine.stats()["submitted"]
    r = client.chat.completions.create(
        model="any-name-at-all", messages=_user("Hello"), max_tokens=6, temperature=0
    )
    assert r.model == "any-name-at-all"
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    choice = r.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 0 and 1 <= u.completion_tokens <= 6
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.prompt_tokens_details.cached_tokens >= 0
    assert live.engine.stats()["submitted"] == before + 1


def test_streaming_matches_non_streaming_greedy(client):
    kw = dict(model="m", messages=_user("Describe the image."), max_tokens=8, temperature=0, seed=1)
    whole = client.chat.completions.create(**kw).choices[0].message.content
    stream = client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens == 8 and usage.prompt_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_base64_image_and_two_images_cost_vision_calls(client, live):
    one = _user(
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": data_uri(png(64, 48, (10, 200, 10)))}},
    )
    before = live.engine.stats()["vision_calls"]
    r1 = client.chat.completions.create(model="m", messages=one, max_tokens=3, temperature=0)
    after_one = live.engine.stats()["vision_calls"]
    two = _user(
        {"type": "image_url", "image_url": {"url": data_uri(png(32, 32, (1, 2, 3)))}},
        {"type": "image_url", "image_url": data_uri(png(48, 16, (200, 2, 3), "JPEG"), "image/jpeg")},
        {"type": "text", "text": "Compare them."},
    )
    r2 = client.chat.completions.create(model="m", messages=two, max_tokens=3, temperature=0)
    assert after_one == before + 1
    assert live.engine.stats()["vision_calls"] == after_one + 2

    # image tokens are prompt tokens: rows x (cols + 1 break), 16-px patches: 64x48 -> 3 x 5; 32x32 -> 2 x 3;
    # 48x16 -> 1 x 4
    def text_only(text):
        return client.chat.completions.create(
            model="m", messages=_user(text), max_tokens=1
        ).usage.prompt_tokens

    assert r1.usage.prompt_tokens == text_only("What is this?") + 15
    assert r2.usage.prompt_tokens == text_only("Compare them.") + 6 + 4


def test_system_prompt_changes_the_prompt(client):
    plain = client.chat.completions.create(model="m", messages=_user("Hi"), max_tokens=1, temperature=0)
    with_system = client.chat.completions.create(
        model="m",
        messages=[{"role": "system", "content": "You are terse."}, *_user("Hi")],
        max_tokens=1,
        temperature=0,
    )
    assert with_system.usage.prompt_tokens > plain.usage.prompt_tokens


def test_logprobs(client):
    r = client.chat.completions.create(
        model="m", messages=_user("Hello"), max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.logprob - 1e-5  # greedy picks the top token
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token or entry.token.startswith("<")


def test_json_schema_response(client, live):
    schema = {
        "type": "object",
        "properties": {"total": {"type": "number"}, "name": {"type": "string", "maxLength": 8}},
        "required": ["total", "name"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model="m",
        messages=_user("Read the receipt."),
        max_tokens=60,
        temperature=0,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "receipt", "schema": schema, "strict": True},
        },
    )
    data = json.loads(r.choices[0].message.content)
    assert (
        set(data) == {"total", "name"} and isinstance(data["total"], (int, float)) and len(data["name"]) <= 8
    )
    assert r.choices[0].finish_reason == "stop"


def test_tool_call(client):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string", "maxLength": 12}},
                    "required": ["city"],
                    "additionalProperties": False,
                },
            },
        }
    ]
    r = client.chat.completions.create(
        model="m",
        messages=_user("Weather in Oslo?"),
        tools=tools,
        tool_choice="required",
        max_tokens=60,
        temperature=0,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls[:1]
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    # the conversation continues with the tool's result
    follow = client.chat.completions.create(
        model="m",
        max_tokens=4,
        temperature=0,
        tools=tools,
        messages=[
            *_user("Weather in Oslo?"),
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 7}'},
        ],
    )
    assert follow.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_streamed_tool_call_arrives_whole(client):
    tools = [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    ]
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=_user("Call f."),
            tools=tools,
            tool_choice="required",
            max_tokens=40,
            temperature=0,
            stream=True,
        )
    )
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [tc.function.name for tc in calls][:1] == ["f"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_errors_surface_as_openai_errors(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="m", messages=_user("Hi"), n=2)
    assert e.value.code == "invalid_request" and e.value.param == "n"
    bad = openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="m", messages=_user("Hi"), max_tokens=1)


def test_completions_for_base_models(client, live):
    r = client.completions.create(
        model="base", prompt="The chart shows", max_tokens=5, temperature=0, logprobs=2
    )
    choice = r.choices[0]
    assert r.object == "text_completion" and r.model == "base" and choice.finish_reason in ("stop", "length")
    lp = choice.logprobs
    assert len(lp.tokens) == r.usage.completion_tokens == len(lp.token_logprobs) == len(lp.top_logprobs)
    assert all(len(top) <= 2 for top in lp.top_logprobs) and lp.text_offset == sorted(lp.text_offset)
    streamed = client.completions.create(
        model="base", prompt="The chart shows", max_tokens=5, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == choice.text
    # images extension: one [IMG] placeholder per image; 32x16 -> 1 row x 2 cols + [IMG_END] = 3 tokens
    with_image = client.completions.create(
        model="base", prompt="[IMG]A photo of", max_tokens=2, extra_body={"images": [data_uri(png(32, 16))]}
    )
    assert with_image.usage.prompt_tokens == 1 + 3 + len(live.engine.tokenizer.encode("A photo of"))
