"""Prompt building against mistral_common 1.13.1's encode_chat_completion (the oracle)."""

from __future__ import annotations

import random
from pathlib import Path

import mistral_common
import numpy as np
import pytest
import torch
from mistral_common.protocol.instruct.chunk import ImageChunk as McImageChunk
from mistral_common.protocol.instruct.chunk import TextChunk as McTextChunk
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from PIL import Image

from pixdesk.errors import InvalidRequest
from pixdesk.tokenizer.chat import (
    ChatMessage,
    EncodedPrompt,
    ImageChunk,
    TextChunk,
    encode_completion,
    encode_instruct,
)
from pixdesk.tokenizer.image import PreparedImage
from pixdesk.tokenizer.tekken import Tekkenizer

TEKKEN = Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"
N_CONVERSATIONS = 250
M = ChatMessage


@pytest.fixture(scope="module")
def tok() -> Tekkenizer:
    return Tekkenizer.from_file(TEKKEN)


@pytest.fixture(scope="module")
def mc() -> MistralTokenizer:
    return MistralTokenizer.from_file(str(TEKKEN))


def _img(w: int, h: int) -> ImageChunk:
    """A PreparedImage with the grid mistral_common gives a w x h image (PIXTRAL.md section 4)."""
    scale = max(w / 1024, h / 1024)
    if scale > 1:
        w, h = max(round(w / scale), 1), max(round(h / scale), 1)
    rows, cols = (h + 15) // 16, (w + 15) // 16
    return ImageChunk(PreparedImage(torch.zeros(3, rows * 16, cols * 16), rows, cols, f"{w}x{h}", (w, h)))


IMG_40x20 = [10, 10, 10, 12, 10, 10, 10, 13]


# -- PIXTRAL.md section 6.2 ----------------------------------------------------------------------------------


def test_examples_table(tok):
    a, b = _img(40, 20), _img(40, 20)
    cases = [
        ([M("user", "Hi")], [1, 3, 37133, 4]),
        (
            [M("system", "SYS"), M("user", "Hi"), M("assistant", "Hello!"), M("user", "Bye")],
            [1, 3, 37133, 4, 22177, 1033, 2, 3, 1083, 61300, 1267, 3606, 1101, 4],
        ),
        (
            [M("system", "SYS"), M("user", [a, TextChunk("What?")])],
            [1, 3, 1083, 61300, 1267, *IMG_40x20, 7493, 1063, 4],
        ),
        (
            [M("user", [TextChunk("Look:"), a, TextChunk("and"), b])],
            [1, 3, 23971, 1058, *IMG_40x20, 1421, *IMG_40x20, 4],
        ),
        ([M("user", [TextChunk("What is this?"), a])], [1, 3, *IMG_40x20, 7493, 1395, 1593, 1063, 4]),
        ([M("user", [TextChunk("x"), _img(16, 32), TextChunk("y")])], [1, 3, 1120, 10, 12, 10, 13, 1121, 4]),
        (
            [
                M("system", "SYS"),
                M("user", [TextChunk("A"), TextChunk("B"), a]),
                M("assistant", "ans"),
                M("user", [b, TextChunk("Again")]),
            ],
            [1, 3, *IMG_40x20, 1065, 1267, 1066, 4, 1545, 2, 3, 1083, 61300, 1267, *IMG_40x20, 50975, 4],
        ),
        ([M("user", "Hi"), M("assistant", "Hel", prefix=True)], [1, 3, 37133, 4, 10725]),
    ]
    for messages, ids in cases:
        assert encode_instruct(tok, messages).ids == ids, messages


def test_system_prompts_and_users_merge(tok):
    got = encode_instruct(tok, [M("system", "S1"), M("system", "S2"), M("user", "a"), M("user", "b")])
    assert got.ids == [1, 3, *tok.encode("S1\n\nS2\n\na\n\nb"), 4]


def test_system_message_separates_user_turns(tok):
    # mistral_common only merges *adjacent* messages: a system message in between keeps two turns.
    got = encode_instruct(tok, [M("user", "a"), M("system", "S"), M("user", "b")])
    assert got.ids == [1, 3, *tok.encode("a"), 4, 3, *tok.encode("S\n\nb"), 4]


def test_assistant_strips_trailing_spaces_only(tok):
    got = encode_instruct(tok, [M("user", "a"), M("assistant", "x \n  "), M("user", "q")])
    assert got.ids == [1, 3, *tok.encode("a"), 4, *tok.encode("x \n"), 2, 3, *tok.encode("q"), 4]


def test_images_in_token_order(tok):
    a, b, c = _img(40, 20), _img(16, 32), _img(17, 1)
    got = encode_instruct(
        tok, [M("user", [a, TextChunk("1")]), M("assistant", "ok"), M("user", [TextChunk("q"), b])]
    )
    assert got.images == [a.image, b.image]
    got = encode_instruct(tok, [M("user", [TextChunk("q"), c]), M("user", [a, TextChunk("x"), b])])
    assert got.images == [c.image, a.image, b.image]  # merged turn [q, c, a, x, b]: no image-first move
    assert got.ids == [1, 3, *tok.encode("q"), *c.image.token_ids(), *a.image.token_ids(), *tok.encode("x"),
                       *b.image.token_ids(), 4]  # fmt: skip


# -- random conversations vs mistral_common ------------------------------------------------------------------

_TEXTS = ["", "Hi", "What is in this image?", " leading space", "\nnewline first", "trailing  ",
          "multi\n\nline", "日本語のテキスト", "emoji 😀👍🏽", "[INST] literal [IMG]", "  ", "\n",
          "code: `x = 1`\n", "tab\tend\t", "The end. ", "Describe the image.", "123 456", "café"]  # fmt: skip


class _Images:
    """Runs mistral_common's image encoder once per image; pixdesk gets the same pixels and grid."""

    def __init__(self, mc: MistralTokenizer, rng: random.Random):
        self._encode = mc.instruct_tokenizer.image_encoder
        self._rng = rng

    def new(self) -> tuple[ImageChunk, McImageChunk]:
        rng = self._rng
        limit = rng.choice([64, 64, 600, 2000])
        w, h = rng.randint(1, limit), rng.randint(1, limit)
        pil = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
        theirs = McImageChunk(image=pil)
        enc = self._encode(theirs)
        _, height, width = enc.image.shape
        image = PreparedImage(torch.from_numpy(enc.image), height // 16, width // 16, "-", (w, h))
        assert image.token_ids() == enc.tokens
        return ImageChunk(image), theirs


def _content(rng: random.Random, images: _Images | None, *, need_text: bool = False):
    """(ours, theirs) message content: a str, or a list of text / image chunks."""
    if rng.random() < 0.4:
        text = rng.choice(_TEXTS[1:] if need_text else _TEXTS)
        return text, text
    ours, theirs = [], []
    for _ in range(rng.randint(1, 4)):
        if images is not None and rng.random() < 0.35:
            o, t = images.new()
        else:
            text = rng.choice(_TEXTS)
            o, t = TextChunk(text), McTextChunk(text=text)
        ours.append(o)
        theirs.append(t)
    if need_text and not any(isinstance(o, TextChunk) and o.text for o in ours):
        ours.append(TextChunk("answer"))
        theirs.append(McTextChunk(text="answer"))
    return ours, theirs


def _message(rng: random.Random, role: str, images: _Images, prefix: bool = False):
    if role == "user":
        ours, theirs = _content(rng, images)
        return M("user", ours), UserMessage(content=theirs)
    if role == "system":
        ours, theirs = _content(rng, None)
        return M("system", ours), SystemMessage(content=theirs)
    ours, theirs = _content(rng, None, need_text=True)
    return M("assistant", ours, prefix=prefix), AssistantMessage(content=theirs, prefix=prefix)


def _roles(rng: random.Random) -> list[tuple[str, bool]]:
    """A role sequence mistral_common accepts (no system right after an assistant) ending validly."""
    roles: list[str] = []
    for _ in range(rng.randint(0, 7)):
        options = (
            ["user", "assistant"] if roles and roles[-1] == "assistant" else ["system", "user", "assistant"]
        )
        roles.append(rng.choice(options))
    ending = rng.choice(["user", "user", "prefix", "user+system"])
    if ending == "prefix":
        return [(r, False) for r in (roles or ["user"])] + [("assistant", True)]
    tail = ["user", "system"] if ending == "user+system" else ["user"]
    return [(r, False) for r in roles + tail]


def test_random_conversations_match_mistral_common(tok, mc):
    rng = random.Random(1234)
    images = _Images(mc, rng)
    n_images = n_prefix = 0
    for n in range(N_CONVERSATIONS):
        pairs = [_message(rng, role, images, prefix) for role, prefix in _roles(rng)]
        ours = encode_instruct(tok, [p[0] for p in pairs])
        theirs = mc.encode_chat_completion(ChatCompletionRequest(messages=[p[1] for p in pairs]))
        assert ours.ids == theirs.tokens, (n, [p[0] for p in pairs])
        assert len(ours.images) == len(theirs.images), n
        for mine, ref in zip(ours.images, theirs.images, strict=True):
            assert np.array_equal(mine.pixels.numpy(), ref), n
        n_images += len(ours.images)
        n_prefix += pairs[-1][0].prefix
    assert n_images > 150 and n_prefix > 30  # the generator really exercises images and prefixes


# -- completion format ---------------------------------------------------------------------------------------


def test_completion_text(tok):
    assert encode_completion(tok, "The image shows") == EncodedPrompt([1, 1784, 3937, 6122], [])
    assert encode_completion(tok, "The image shows", bos=False).ids == [1784, 3937, 6122]
    # Splitting a document into chunks does not change its tokens.
    split = [TextChunk("The im"), TextChunk("age"), TextChunk(" shows")]
    assert encode_completion(tok, split).ids == [1, 1784, 3937, 6122]


def test_completion_images_in_document_order(tok):
    a, b = _img(40, 20), _img(16, 32)
    got = encode_completion(tok, [a, TextChunk("The image shows"), b, TextChunk("")])
    assert got.ids == [1, *IMG_40x20, 1784, 3937, 6122, 10, 12, 10, 13]
    assert got.images == [a.image, b.image]


def test_completion_bad_chunk(tok):
    with pytest.raises(InvalidRequest) as err:
        encode_completion(tok, [TextChunk("a"), "b"])  # type: ignore[list-item]
    assert err.value.param == "prompt[1]"


# -- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "param", "hint"),
    [
        ([], "messages", "non-empty"),
        ([M("robot", "x")], "messages[0].role", "one of system, user, assistant"),
        ([M("user", "a"), M("tool", "{}")], "messages[1].role", "'tool'"),
        ([M("system", "S")], "messages", "add a user message"),
        ([M("user", "a"), M("assistant", "b")], "messages[1].role", "prefix=true"),
        ([M("user", "a"), M("assistant", "b"), M("system", "S")], "messages[1].role", "prefix=true"),
        ([M("user", "a"), M("assistant", "b", prefix=True), M("user", "c")], "messages[1].prefix", "final"),
        ([M("user", "a", prefix=True)], "messages[0].prefix", "assistant"),
        (
            [M("user", "a"), M("assistant", [_img(4, 4)], prefix=True)],
            "messages[1].content[0]",
            "user messages",
        ),
        (
            [M("system", [TextChunk("S"), _img(4, 4)]), M("user", "a")],
            "messages[0].content[1]",
            "user messages",
        ),
        ([M("user", "a"), M("assistant", ""), M("user", "b")], "messages[1].content", "non-empty"),
        ([M("user", "a"), M("assistant", [TextChunk("")], prefix=True)], "messages[1].content", "non-empty"),
        ([M("user", 5)], "messages[0].content", "string or a list"),  # type: ignore[arg-type]
        ([M("user", ["raw str"])], "messages[0].content[0]", "text or image chunk"),  # type: ignore[list-item]
        ([{"role": "user", "content": "x"}], "messages[0]", "chat message"),
    ],
)
def test_bad_input(tok, messages, param, hint):
    with pytest.raises(InvalidRequest) as err:
        encode_instruct(tok, messages)
    assert err.value.param == param
    assert hint in err.value.message
    assert err.value.code == "invalid_request"


def test_leading_assistant_gets_an_empty_user_turn(tok, mc):
    ours = encode_instruct(tok, [M("system", "S"), M("assistant", "Hel", prefix=True)])
    theirs = mc.encode_chat_completion(
        ChatCompletionRequest(
            messages=[SystemMessage(content="S"), AssistantMessage(content="Hel", prefix=True)]
        )
    )
    assert ours.ids == theirs.tokens == [1, 3, *tok.encode("S\n\n"), 4, 10725]
