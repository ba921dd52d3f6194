"""Tekkenizer against mistral_common 1.13.1 (the oracle) on the real Pixtral tokenizer file."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import mistral_common
import pytest
from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy as McPolicy
from mistral_common.tokens.tokenizers.base import TokenizerVersion
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from mistral_common.tokens.tokenizers.tekken import Tekkenizer as McTekkenizer

from pixdesk.errors import InvalidCheckpoint, TokenizerError
from pixdesk.tokenizer.tekken import (
    SpecialTokenPolicy,
    Tekkenizer,
    find_tokenizer_file,
    load_tokenizer,
)

TEKKEN = Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"
N_STRINGS = 2500
_LEGACY_NAMES = [str(t["token_str"]) for t in McTekkenizer.DEPRECATED_SPECIAL_TOKENS]

_FRAGMENTS = {
    "english": ["Hello", " world", "The quick brown fox", " jumps over the lazy dog.", "It's", " don't",
                "CAPS"],
    "chinese": ["你好，世界", "后汉书", "图像中有什么？", "我们", "機器學習"],
    "japanese": ["こんにちは", "カタカナ", "日本語のテキスト", "東京都"],
    "code": ["def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) {", "  }\n", "a->b", "x != y",
             '{"key": [1, 2, 3]}', "// comment", "#include <stdio.h>", "lambda: None", "</div>"],
    "emoji": ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇫🇷", "🧑🏾‍💻"],
    "space": [" ", "  ", "\t", "\t\t", "\r\n", "\n", "\n\n\n", "   \n", " \t \n ", "\u00a0", "\u3000"],
    "digits": ["0", "42", "2024", "3.14159", "1,000,000", "007", "12345678901234567890"],
    "specials": ["[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "<s>", "</s>", "<unk>", "<SPECIAL_20>"],
    "latin": ["café", "naïve", "Ångström", "façade", "Zürich", "señor", "Łódź", "ß"],
    "arabic": ["مرحبا بالعالم", "السلام عليكم", "١٢٣"],
    "other": ["Привет", "Γειά σου", "שלום", "नमस्ते", "สวัสดี", "한국어", "e\u0301", "\u200b", "ﬁ"],
}  # fmt: skip


def _random_strings(n: int, seed: int = 20240911) -> list[str]:
    rng = random.Random(seed)
    groups = list(_FRAGMENTS.values())
    out = ["", " ", "Hello, world!  It's 2024\n\n  done", ' ("*']
    while len(out) < n:
        parts = []
        for _ in range(rng.randint(1, 7)):
            if rng.random() < 0.1:  # random code points from the BMP and beyond, no surrogates
                cp = rng.choice(
                    [rng.randint(0x20, 0x2FF), rng.randint(0x4E00, 0x9FFF), rng.randint(0x1F300, 0x1FAFF)]
                )
                parts.append(chr(cp))
            else:
                parts.append(rng.choice(rng.choice(groups)))
            if rng.random() < 0.3:
                parts.append(rng.choice(["", " ", "\n", ". ", ", "]))
        out.append("".join(parts))
    return out


@pytest.fixture(scope="module")
def tok() -> Tekkenizer:
    return Tekkenizer.from_file(TEKKEN)


@pytest.fixture(scope="module")
def mc_tok():
    return MistralTokenizer.from_file(str(TEKKEN)).instruct_tokenizer.tokenizer


@pytest.fixture(scope="module")
def strings() -> list[str]:
    return _random_strings(N_STRINGS)


# -- encoding ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "bos", "eos", "ids"),
    [
        ("Hello world", True, True, [1, 22177, 4304, 2]),
        (" Hello", False, False, [45383]),
        ("Describe the image.", False, False, [5847, 13089, 1278, 3937, 1046]),
        ("café", False, False, [3173, 1102, 1337]),
        ("😀", False, False, [1240, 1159, 1152, 1128]),
        ("[INST]", False, False, [1091, 3174, 3074, 1093]),
        ("[IMG]", False, False, [1091, 125250, 1093]),
        (' ("*', False, False, [7504, 1042]),
        ("The image shows", True, False, [1, 1784, 3937, 6122]),
        ("", True, False, [1]),
    ],
)
def test_reference_encodings(tok, text, bos, eos, ids):
    assert tok.encode(text, bos=bos, eos=eos) == ids


def test_vocab_layout(tok):
    assert (tok.n_words, tok.num_special) == (131072, 1000)
    assert (tok.image_patch_size, tok.max_image_size) == (16, 1024)
    assert tok.id_to_bytes(1000) == b"\x00"
    assert tok.id_to_piece(131071) == "后汉书"
    assert tok.id_to_piece(Tekkenizer.IMG) == "[IMG]" and tok.id_to_bytes(Tekkenizer.BOS) == b"<s>"
    assert [tok.is_special(i) for i in (0, 999, 1000, 131071)] == [True, True, False, False]


def test_special_names_match_mistral_common(tok, mc_tok):
    assert [tok.id_to_piece(i) for i in range(1000)] == [mc_tok.id_to_piece(i) for i in range(1000)]
    assert [tok.id_to_piece(i) for i in (17, 18, 19)] == [
        "[SYSTEM_PROMPT]",
        "[/SYSTEM_PROMPT]",
        "[TOOL_CONTENT]",
    ]


def test_pieces_match_mistral_common(tok, mc_tok):
    ids = random.Random(1).sample(range(1000, tok.n_words), 3000)
    assert [tok.id_to_piece(i) for i in ids] == [mc_tok.id_to_piece(i) for i in ids]
    assert [tok.id_to_bytes(i) for i in ids] == [mc_tok.id_to_byte_piece(i) for i in ids]


def test_encode_matches_mistral_common(tok, mc_tok, strings):
    assert len(strings) >= 2000
    mismatches = [
        s for s in strings if tok.encode(s, bos=True, eos=True) != mc_tok.encode(s, bos=True, eos=True)
    ]
    assert mismatches == []


def test_decode_roundtrip(tok, strings):
    assert [s for s in strings if tok.decode(tok.encode(s)) != s] == []


def test_lone_surrogate_matches_mistral_common(tok, mc_tok):
    assert tok.encode("a\ud800b") == mc_tok.encode("a\ud800b", bos=False, eos=False)


@pytest.mark.parametrize("policy", list(SpecialTokenPolicy))
def test_decode_random_ids_matches_mistral_common(tok, mc_tok, policy):
    rng = random.Random(7)
    mc_policy = McPolicy[policy.name]
    for _ in range(300):
        ids = [_random_id(rng, tok.n_words) for _ in range(rng.randint(0, 12))]
        try:
            expected = mc_tok.decode(ids, special_token_policy=mc_policy)
        except ValueError:
            with pytest.raises(TokenizerError):
                tok.decode(ids, special=policy)
            continue
        assert tok.decode(ids, special=policy) == expected, ids


def _random_id(rng: random.Random, n_words: int) -> int:
    r = rng.random()
    if r < 0.15:
        return rng.randint(0, 20)  # control tokens
    if r < 0.6:
        return rng.randint(1000, 1255)  # single bytes: lots of split / invalid UTF-8
    return rng.randint(1256, n_words - 1)


def test_decode_keep_renders_names(tok):
    assert tok.decode([1, 3, 37133, 4, 2], special=SpecialTokenPolicy.KEEP) == "<s>[INST]Hi[/INST]</s>"
    assert tok.decode([1, 3, 37133, 4, 2]) == "Hi"
    with pytest.raises(TokenizerError):
        tok.decode([37133, 2], special=SpecialTokenPolicy.RAISE)


@pytest.mark.parametrize("bad", [-1, 131072, 10**9, "5", 1.0])
def test_bad_ids_raise(tok, bad):
    with pytest.raises(TokenizerError):
        tok.decode([bad])
    with pytest.raises(TokenizerError):
        tok.stream_decoder().push(bad)


# -- streaming -----------------------------------------------------------------------------------------------


def _stream(tok: Tekkenizer, ids: list[int], policy=SpecialTokenPolicy.IGNORE) -> list[str]:
    dec = tok.stream_decoder(special=policy)
    return [dec.push(i) for i in ids] + [dec.flush()]


def test_stream_never_splits_a_character(tok, strings):
    for s in strings:
        pieces = _stream(tok, tok.encode(s))
        assert "".join(pieces) == s
        assert not any("\ufffd" in p for p in pieces), s


def test_stream_emoji_waits_for_last_byte(tok):
    assert _stream(tok, [1240, 1159, 1152, 1128]) == ["", "", "", "😀", ""]
    assert _stream(tok, [1240, 1159, 1152]) == [
        "",
        "",
        "",
        "\ufffd",
    ]  # truncated at the end: U+FFFD only at flush
    family = "a👨‍👩‍👧b"
    ids = tok.encode(family)
    assert len(ids) > len(family)  # some characters really are split over several byte tokens
    pieces = _stream(tok, ids)
    assert "".join(pieces) == family and "\ufffd" not in "".join(pieces)


@pytest.mark.parametrize("policy", [SpecialTokenPolicy.IGNORE, SpecialTokenPolicy.KEEP])
def test_stream_equals_decode_on_random_ids(tok, policy):
    rng = random.Random(11)
    for _ in range(500):
        ids = [_random_id(rng, tok.n_words) for _ in range(rng.randint(0, 16))]
        assert "".join(_stream(tok, ids, policy)) == tok.decode(ids, special=policy), ids


def test_stream_invalid_byte_is_replaced_at_once(tok):
    # 0xFF can never start a character, so it is replaced immediately rather than buffered.
    assert _stream(tok, [1000 + 0xFF, tok.encode("a")[0]]) == ["\ufffd", "a", ""]


def test_stream_raise_policy(tok):
    dec = tok.stream_decoder(special=SpecialTokenPolicy.RAISE)
    assert dec.push(1240) == ""
    with pytest.raises(TokenizerError):
        dec.push(Tekkenizer.EOS)
    assert dec.push(1159) + dec.push(1152) + dec.push(1128) == "😀"  # buffer survived the refused token


# -- vocab truncation ----------------------------------------------------------------------------------------


def test_full_vocab_would_produce_out_of_range_ids():
    full = Tekkenizer.from_file(TEKKEN, vocab_size=151000)
    assert full.encode(' ("*') == [150999]


def test_truncated_vocab_matches_mistral_common(strings):
    small = Tekkenizer.from_file(TEKKEN, vocab_size=20000)
    data = json.loads(TEKKEN.read_text(encoding="utf-8"))
    oracle = McTekkenizer(
        vocab=data["vocab"],
        special_tokens=list(McTekkenizer.DEPRECATED_SPECIAL_TOKENS),
        pattern=data["config"]["pattern"],
        vocab_size=20000,
        num_special_tokens=1000,
        version=TokenizerVersion.v3,
    )
    assert small.n_words == 20000
    for s in strings[:400]:
        ids = small.encode(s)
        assert ids == oracle.encode(s, bos=False, eos=False)
        assert all(i < 20000 for i in ids)
        assert small.decode(ids) == s


# -- HF tokenizer.json ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """tokenizer.json written offline by transformers' own tekken converter (about 3 s)."""
    from transformers.integrations.mistral.tokenizer import MistralConverter

    out = tmp_path_factory.mktemp("hf")
    MistralConverter(str(TEKKEN)).converted().save(str(out / "tokenizer.json"))
    return out


def test_hf_tokenizer_json_gives_same_ids(tok, hf_dir, strings):
    hf = Tekkenizer.from_hf_tokenizer_json(hf_dir / "tokenizer.json")
    assert (hf.n_words, hf.num_special, hf.image_patch_size) == (131072, 1000, None)
    assert [hf.id_to_piece(i) for i in range(1000)] == [tok.id_to_piece(i) for i in range(1000)]
    # All strings: encoding is cheap once the converted file exists.
    assert [s for s in strings if hf.encode(s, bos=True) != tok.encode(s, bos=True)] == []
    assert hf.encode(' ("*') == [7504, 1042]


def test_hf_tokenizer_json_truncation(hf_dir):
    hf = Tekkenizer.from_hf_tokenizer_json(hf_dir / "tokenizer.json", vocab_size=20000)
    assert hf.n_words == 20000 and max(hf.encode("后汉书 and 機器學習")) < 20000


def test_load_tokenizer_prefers_tekken(tmp_path, hf_dir):
    (tmp_path / "tokenizer.json").symlink_to(hf_dir / "tokenizer.json")
    assert find_tokenizer_file(tmp_path) == tmp_path / "tokenizer.json"
    assert load_tokenizer(tmp_path).image_patch_size is None
    (tmp_path / "tekken.json").symlink_to(TEKKEN)
    assert find_tokenizer_file(tmp_path) == tmp_path / "tekken.json"
    assert load_tokenizer(tmp_path).image_patch_size == 16


def test_missing_tokenizer_names_the_dir(tmp_path):
    with pytest.raises(InvalidCheckpoint, match=str(tmp_path)):
        find_tokenizer_file(tmp_path)
    with pytest.raises(InvalidCheckpoint, match=str(tmp_path)):
        load_tokenizer(tmp_path)


def test_load_is_fast():
    start = time.perf_counter()
    Tekkenizer.from_file(TEKKEN)
    assert time.perf_counter() - start < 3.0  # about 0.5 s here; slack for a busy CI core


# -- bad files, special_tokens lists, tiktoken panics --------------------------------------------------------


@pytest.fixture(scope="module")
def tekken_data() -> dict:
    return json.loads(TEKKEN.read_text(encoding="utf-8"))


def _tiny(data: dict, n_ranks: int = 400, **top) -> dict:
    config = dict(data["config"], default_vocab_size=1000 + n_ranks)
    return {"config": config, "vocab": data["vocab"][:n_ranks], **top}


def _write(path: Path, obj) -> Path:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return path


def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: _without(d, "config"), "config"),
        (lambda d: _without(d, "vocab"), "vocab"),
        (lambda d: {**d, "config": _without(d["config"], "pattern")}, "config.pattern"),
        (
            lambda d: {**d, "config": {**d["config"], "default_vocab_size": "big"}},
            "config.default_vocab_size",
        ),
        (lambda d: {**d, "config": {**d["config"], "default_vocab_size": 5000}}, "vocab"),
        (
            lambda d: {
                **d,
                "vocab": [*d["vocab"][:5], {**d["vocab"][5], "token_bytes": "@@!"}, *d["vocab"][6:]],
            },
            "vocab[5].token_bytes",
        ),
        (lambda d: {**d, "vocab": [*d["vocab"][:7], {"rank": 7}, *d["vocab"][8:]]}, "vocab[7]"),
        (
            lambda d: {**d, "vocab": [*d["vocab"][:9], {**d["vocab"][9], "rank": 99}, *d["vocab"][10:]]},
            "vocab[9].rank",
        ),
        (
            lambda d: {**d, "vocab": [*d["vocab"][:300], d["vocab"][299] | {"rank": 300}, *d["vocab"][301:]]},
            "rank 300",
        ),
        (lambda d: {**d, "image": {"image_patch_size": 16}}, "image.max_image_size"),
        (lambda d: {**d, "config": {**d["config"], "pattern": "(["}}, "BPE tokenizer"),
    ],
)
def test_bad_tekken_file(tmp_path, tekken_data, mutate, field):
    path = _write(tmp_path / "tekken.json", mutate(_tiny(tekken_data)))
    with pytest.raises(InvalidCheckpoint) as err:
        Tekkenizer.from_file(path)
    assert str(path) in err.value.message and field in err.value.message
    assert err.value.code == "invalid_checkpoint"


def test_truncated_or_missing_file(tmp_path, tekken_data):
    text = json.dumps(_tiny(tekken_data))
    path = _write(tmp_path / "tekken.json", text[: len(text) // 2])
    with pytest.raises(InvalidCheckpoint, match="not valid JSON") as err:
        Tekkenizer.from_file(path)
    assert str(path) in err.value.message
    with pytest.raises(InvalidCheckpoint, match="nope.json"):
        Tekkenizer.from_file(tmp_path / "nope.json")
    with pytest.raises(InvalidCheckpoint, match="top level"):
        Tekkenizer.from_file(_write(tmp_path / "list.json", "[]"))


def test_bad_hf_file(tmp_path, tekken_data):
    from transformers.integrations.mistral.tokenizer import MistralConverter

    tiny = _write(tmp_path / "tekken.json", _tiny(tekken_data))
    MistralConverter(str(tiny)).converted().save(str(tmp_path / "tokenizer.json"))
    data = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    good = Tekkenizer.from_hf_tokenizer_json(tmp_path / "tokenizer.json")
    assert good.encode("Hello, world!") == Tekkenizer.from_file(tiny).encode("Hello, world!")
    cases = [
        ({**data, "pre_tokenizer": None}, "pre_tokenizer"),
        ({**data, "added_tokens": data["added_tokens"][1:]}, "added_tokens"),
        (
            {**data, "model": {**data["model"], "vocab": {**data["model"]["vocab"], "\x00bad": 1400}}},
            "byte-level",
        ),
        (
            {**data, "model": {**data["model"], "vocab": {**data["model"]["vocab"], "Ġzz": 1500}}},
            "contiguous",
        ),
        ({**data, "model": {**data["model"], "type": "WordPiece"}}, "model.type"),
    ]
    for i, (bad, field) in enumerate(cases):
        path = _write(tmp_path / f"bad{i}.json", bad)
        with pytest.raises(InvalidCheckpoint, match=field) as err:
            Tekkenizer.from_hf_tokenizer_json(path)
        assert str(path) in err.value.message


def test_special_tokens_list_and_multimodal_block(tmp_path, tekken_data):
    legacy = [{"rank": i, "token_str": s, "is_control": True} for i, s in enumerate(_LEGACY_NAMES)]
    specials = [*legacy, {"rank": 20, "token_str": "[CUSTOM]", "is_control": True}]
    mm = {"image_patch_size": 14, "max_image_size": 1540}
    path = _write(tmp_path / "tekken.json", _tiny(tekken_data, special_tokens=specials, multimodal=mm))
    ours = Tekkenizer.from_file(path)
    oracle = McTekkenizer.from_file(path)
    assert [ours.id_to_piece(i) for i in range(1000)] == [oracle.id_to_piece(i) for i in range(1000)]
    assert ours.id_to_piece(20) == "[CUSTOM]" and ours.id_to_piece(21) == "<SPECIAL_21>"
    assert (ours.image_patch_size, ours.max_image_size) == (14, 1540)
    assert ours.encode("[CUSTOM] <s>") == oracle.encode("[CUSTOM] <s>", bos=False, eos=False)


def test_special_tokens_that_move_fixed_ids_are_rejected(tmp_path, tekken_data):
    names = list(_LEGACY_NAMES)
    names[10], names[11] = names[11], names[10]  # [IMG] no longer at id 10
    specials = [{"rank": i, "token_str": s, "is_control": True} for i, s in enumerate(names)]
    path = _write(tmp_path / "tekken.json", _tiny(tekken_data, special_tokens=specials))
    with pytest.raises(InvalidCheckpoint, match=r"special token 10 must be '\[IMG\]'"):
        Tekkenizer.from_file(path)


def test_tiktoken_panic_becomes_tokenizer_error(tmp_path, tekken_data):
    # 100 ranks: bytes 100..255 have no token, and tiktoken panics (a BaseException) on "hello".
    tiny = Tekkenizer.from_file(_write(tmp_path / "tekken.json", _tiny(tekken_data, n_ranks=100)))
    assert tiny.encode("!!") == [1033, 1033]
    with pytest.raises(TokenizerError, match="PanicException"):
        tiny.encode("hello")


class _Boom(BaseException):
    pass


def test_base_exceptions_are_wrapped_but_interrupts_pass(tok, monkeypatch):
    def boom(text):
        raise _Boom("x")

    monkeypatch.setattr(tok._enc, "encode_ordinary", boom)
    with pytest.raises(TokenizerError, match="_Boom"):
        tok.encode("hi")

    def interrupt(text):
        raise KeyboardInterrupt

    monkeypatch.setattr(tok._enc, "encode_ordinary", interrupt)
    with pytest.raises(KeyboardInterrupt):
        tok.encode("hi")


def test_encode_rejects_non_str(tok):
    with pytest.raises(TokenizerError):
        tok.encode(b"bytes")  # type: ignore[arg-type]
