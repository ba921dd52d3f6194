"""SECURITY.md rows 11, 12, 18-20, 24 and 28 over HTTP: schema, bounds, image count, context, special tokens,
local paths and capture sources. Each refusal: exact status and code, unchanged counters, next request OK."""

from __future__ import annotations

import pytest

from tests.server.conftest import data_uri, png

CHAT = "/v1/chat/completions"


def body(content="hi", **fields):
    return {
        "model": "m",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 2,
        "temperature": 0,
        **fields,
    }


def refused(live, status, code, payload=None, *, path=CHAT, raw=None, param=None, needle=None):
    before = live.counters()
    dials = len(live.net.dials)
    got, _, out = live.request("POST", path, payload, raw=raw)
    assert (got, out["error"]["code"]) == (status, code), out
    assert (
        set(out["error"]) == {"message", "type", "param", "code"}
        and "Traceback" not in out["error"]["message"]
    )
    if param is not None:
        assert out["error"]["param"] == param, out
    if needle is not None:
        assert needle in out["error"]["message"], out
    assert live.counters() == before and len(live.net.dials) == dials
    live.assert_ok_after()
    return out["error"]


# ------------------------------------------------------------------------------------------ row 11


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"[]",
        b'"x"',
        b"",
        b"\xff\xfe",
        b'{"model": NaN}',
        b'{"a": Infinity}',
        b"[" * 10_000 + b"]" * 10_000,
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
        b'{"seed": 1' + b"0" * 5000 + b"}",
    ],
)
def test_malformed_json_is_400(live, raw):
    refused(live, 400, "invalid_request", raw=raw)


@pytest.mark.parametrize(
    "payload,param",
    [
        ({"messages": "hi"}, "messages"),
        (body([{"type": "text", "text": 5}]), "messages[0].content[0].text"),
        (body(temperature="hot"), "temperature"),
        (body(stream="yes"), "stream"),
        (body(max_tokens=2.5), "max_tokens"),
        (body(stop=[1]), "stop"),
        ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "user", "content": "x", "colour": 1}]}, "messages[0].colour"),
        (body(banana=1), "banana"),
        (
            body([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA", "zoom": 2}}]),
            "messages[0].content[0].image_url.zoom",
        ),
        (body(stream_options={"include_usage": True, "x": 1}), "stream_options.x"),
        (body(n=2), "n"),
        (body(modalities=["text", "audio"]), "modalities"),
        (body(audio={"voice": "alloy", "format": "mp3"}), "audio"),
        (body(user="u" * 100_000), "user"),
    ],
)
def test_wrong_fields_name_their_path(live, payload, param):
    refused(live, 400, "invalid_request", payload, param=param)


def test_documented_fields_that_cannot_change_the_output_are_accepted(live):
    extras = {
        "user": "me",
        "metadata": {"k": "v"},
        "store": False,
        "service_tier": "auto",
        "parallel_tool_calls": True,
        "prediction": {"type": "content", "content": "x"},
        "reasoning_effort": "low",
        "verbosity": "low",
        "safety_identifier": "s",
        "prompt_cache_key": "k",
        "modalities": ["text"],
        "n": 1,
        "stream_options": None,
        "logprobs": False,
        "response_format": {"type": "text"},
        "seed": 3,
        "frequency_penalty": 0.5,
        "presence_penalty": -0.5,
        "logit_bias": {"5": 10},
        "stop": ["zzz"],
        "max_completion_tokens": 3,
        "priority": "batch",
        "top_k": 5,
        "top_p": 0.9,
    }
    status, _, out = live.request("POST", CHAT, body(**extras))
    assert status == 200, out
    assert out["usage"]["completion_tokens"] <= 3  # max_completion_tokens wins over max_tokens


def test_hundred_megabyte_string_field_is_400_naming_it(tiny_dir):
    from pixdesk.server.app import create_app
    from tests.server.conftest import API_KEY, Live, ServerThread, make_engine, make_settings

    settings = make_settings(server={"max_body_bytes": 120 * 2**20})
    engine = make_engine(tiny_dir, max_batch=1)
    with ServerThread(create_app(engine, settings, API_KEY), settings) as srv:
        live = Live(srv.port, engine, None, None)
        big = (
            b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "user": "'
            + b"x" * (100 * 2**20)
            + b'"}'
        )
        status, _, out = live.request("POST", CHAT, raw=big, timeout=60)
        assert (status, out["error"]["code"], out["error"]["param"]) == (400, "invalid_request", "user")
        text = {"model": "m", "messages": [{"role": "user", "content": "word " * 4_000_000}]}
        status, _, out = live.request("POST", CHAT, text, timeout=60)
        assert (status, out["error"]["code"]) == (400, "context_length_exceeded")  # refused before tokenizing
        assert engine.stats()["submitted"] == 0
        live.assert_ok_after()
    engine.stop()


# ------------------------------------------------------------------------------------------ row 12


@pytest.mark.parametrize(
    "field,value,limit",
    [
        ("temperature", -0.1, "[0.0, 100.0]"),
        ("top_p", 0, "(0.0, 1.0]"),
        ("top_p", 1.5, "(0.0, 1.0]"),
        ("top_k", -1, "[0, "),
        ("max_tokens", 0, "at least 1"),
        ("max_tokens", -5, "at least 1"),
        ("max_tokens", 10**9, "[1, 512]"),
        ("seed", 2**63, "2**63"),
        ("seed", 2**64 + 1, None),
        ("frequency_penalty", 3, "[-2.0, 2.0]"),
        ("presence_penalty", -2.5, "[-2.0, 2.0]"),
        ("top_logprobs", 21, "[0, 20]"),
        ("logit_bias", {"-1": 5}, "logit_bias"),
        ("logit_bias", {"5": 101}, "100"),
        ("logit_bias", {"99999": 1}, "2047"),
    ],
)
def test_sampling_bounds(live, field, value, limit):
    extra = {"logprobs": True} if field == "top_logprobs" else {}
    err = refused(live, 400, "invalid_request", body(**{field: value}, **extra))
    assert field.split()[0] in (err["param"] or "")
    if limit and limit != "2**63":
        assert limit in err["message"], err


def test_non_finite_numbers_never_reach_the_engine(live):
    for raw in (
        b'{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":NaN}',
        b'{"model":"m","messages":[{"role":"user","content":"x"}],"top_p":-Infinity}',
        b'{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":1e999}',
    ):
        refused(live, 400, "invalid_request", raw=raw)


# ------------------------------------------------------------------------------------------ row 18


def _images(n, url=False):
    parts = [{"type": "image_url", "image_url": {"url": data_uri(png(16 + i, 16))}} for i in range(n)]
    if url:
        parts[-1] = {"type": "image_url", "image_url": {"url": "http://img.test/a.png"}}
    return parts + [{"type": "text", "text": "count"}]


def test_too_many_images(live):
    err = refused(live, 413, "too_many_images", body(_images(13)), param="messages")
    assert "12" in err["message"] and "13" in err["message"]
    refused(live, 413, "too_many_images", body(_images(13, url=True)))  # mixed: nothing fetched either
    before = live.engine.stats()["vision_calls"]
    status, _, out = live.request("POST", CHAT, body(_images(12)))
    assert status == 200, out
    assert live.engine.stats()["vision_calls"] == before + 12


def test_too_many_images_across_messages(live):
    msgs = [
        {"role": "user", "content": _images(7)},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": _images(6)},
    ]
    refused(live, 413, "too_many_images", {"model": "m", "messages": msgs, "max_tokens": 1})


# ------------------------------------------------------------------------------------------ row 19


def test_context_overflow_is_400_with_counts(live):
    err = refused(live, 400, "context_length_exceeded", body("word " * 2000))
    assert "512" in err["message"] and "tokens" in err["message"]
    # the prompt fits, prompt + max_tokens does not
    status, _, out = live.request("POST", CHAT, body("hello", max_tokens=510))
    assert status == 400 and out["error"]["code"] == "context_length_exceeded"
    assert "510" in out["error"]["message"] and out["error"]["param"] == "max_tokens"
    # an image that alone outgrows the context
    err = refused(
        live,
        400,
        "context_length_exceeded",
        body([{"type": "image_url", "image_url": data_uri(png(512, 512))}]),
    )


def test_default_max_tokens_fits_what_is_left(live):
    # no max_tokens: the answer may use what the context has left, capped by server.default_max_tokens (16)
    status, _, out = live.request(
        "POST", CHAT, {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert status == 200 and out["usage"]["completion_tokens"] <= 16


# ------------------------------------------------------------------------------------------ row 20


@pytest.mark.parametrize(
    "text", ["[IMG]", "<s>", "</s>", "[INST] x [/INST]", "<|im_start|>", "[IMG_BREAK][IMG_END]"]
)
def test_special_token_strings_are_plain_text(live, text):
    engine = live.engine
    ids = engine.tokenizer.encode(text)
    assert not any(engine.tokenizer.is_special(i) for i in ids)
    status, _, out = live.request("POST", CHAT, body(text, max_tokens=1))
    assert status == 200
    # <s>[INST] + text + [/INST]: only three control ids
    assert out["usage"]["prompt_tokens"] == len(ids) + 3


def test_generated_control_ids_never_break_a_request(live):
    # logit_bias forces the model to emit [IMG] (10), <s> (1) and [INST] (3): the answer must still be a 200
    for token in (10, 1, 3):
        status, _, out = live.request("POST", CHAT, body(max_tokens=3, logit_bias={str(token): 100}))
        assert status == 200 and out["usage"]["completion_tokens"] == 3, out
    live.assert_ok_after()


def test_completion_placeholders_must_match_images(live):
    one = data_uri(png())
    refused(
        live,
        400,
        "image_token_mismatch",
        {"prompt": "a [IMG] b [IMG]", "images": [one]},
        path="/v1/completions",
    )
    refused(
        live,
        400,
        "image_token_mismatch",
        {"prompt": "no placeholder", "images": [one]},
        path="/v1/completions",
    )
    status, _, out = live.request(
        "POST", "/v1/completions", {"prompt": "A photo: [IMG] shows", "images": [one], "max_tokens": 3}
    )
    assert status == 200 and out["object"] == "text_completion"
    # without images, [IMG] is just text
    status, _, out = live.request("POST", "/v1/completions", {"prompt": "[IMG]", "max_tokens": 1})
    assert status == 200 and out["usage"]["prompt_tokens"] == 1 + len(live.engine.tokenizer.encode("[IMG]"))


# ------------------------------------------------------------------------------------------ row 24


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "/etc/passwd",
        "../secret.png",
        "C:\\\\x.png",
        "~/x.png",
        "ftp://example.com/a.png",
        "gopher://example.com/",
        "javascript:alert(1)",
        "img.png",
    ],
)
def test_local_paths_and_other_schemes(live, url):
    refused(live, 400, "url_not_allowed", body([{"type": "image_url", "image_url": {"url": url}}]))


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "screen:"}},
        {"type": "screenshot"},
        {"type": "image", "source": "clipboard"},
        {"type": "image_url", "source": "screen", "image_url": {"url": "data:image/png;base64,AA"}},
    ],
)
def test_capture_sources_are_refused(live, part):
    refused(live, 400, "capture_not_allowed", body([part]))


def test_file_sources_are_refused(live):
    refused(live, 400, "url_not_allowed", body([{"type": "image", "source": "file", "path": "/etc/passwd"}]))
    refused(live, 400, "url_not_allowed", body([{"type": "image_url", "path": "/tmp/x.png"}]))


# ------------------------------------------------------------------------------------------ row 28
def test_cache_is_keyed_on_image_content(live):
    """Row 28 over HTTP: the same text with another image reuses no image KV; the same pixels in another
    container (PNG vs lossless WebP) hit the cache; cached and uncached greedy answers are identical."""
    import io

    from PIL import Image

    text = "Describe the picture in detail, please, and then list every object you can see in it. " * 2

    def ask(uri):
        body = {
            "model": "m",
            "max_tokens": 6,
            "temperature": 0,
            "logprobs": True,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": uri}, {"type": "text", "text": text}],
                }
            ],
        }
        status, _, out = live.request("POST", "/v1/chat/completions", body)
        assert status == 200, out
        return out

    a_img = Image.new("RGB", (64, 64), (250, 10, 10))
    a_png, b_png = png(64, 64, (250, 10, 10)), png(64, 64, (10, 10, 250))
    buf = io.BytesIO()
    a_img.save(buf, "WEBP", lossless=True)
    first = ask(data_uri(a_png))
    other = ask(data_uri(b_png))
    again = ask(data_uri(buf.getvalue(), "image/webp"))
    cached = lambda out: out["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached(other) < 16  # nothing past the first block (<s>[INST] then the image) is shared
    assert cached(again) >= 64  # the whole image block chain is reused
    assert again["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]
    lp = lambda out: [round(t["logprob"], 4) for t in out["choices"][0]["logprobs"]["content"]]
    assert lp(again) == lp(first)
