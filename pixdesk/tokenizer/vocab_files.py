"""Tokenizer files: Mistral `tekken.json` and HF `tokenizer.json`, read and validated into one record.

Every malformed field is an InvalidCheckpoint naming the file and the field. Only the first
`vocab_size - num_special` ranks are kept: truncation happens before BPE ever sees the table.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path

from pixdesk.errors import InvalidCheckpoint

# Names used when a tokenizer file has no `special_tokens` list (all Pixtral-12B files). Ids 17..19 follow
# mistral_common 1.13.1; the Sept-2024 library called them <SPECIAL_17..19>. v3 prompts never emit them.
LEGACY_SPECIALS = (
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
    "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
)  # fmt: skip


@dataclass(frozen=True)
class VocabFile:
    ranks: list[bytes]  # ordinary tokens by rank (id = rank + len(specials))
    specials: list[str]  # control-token names by id
    pattern: str  # pre-tokenizer regex
    image_patch_size: int | None = None
    max_image_size: int | None = None


def read_tekken_json(path: Path, vocab_size: int | None) -> VocabFile:
    data = _read_json(path)
    config = _field(data, "config", dict, path)
    pattern = _field(config, "pattern", str, path, "config.")
    num_special = _field(config, "default_num_special_tokens", int, path, "config.")
    if vocab_size is None:
        vocab_size = _field(config, "default_vocab_size", int, path, "config.")
    specials = _parse_specials(data.get("special_tokens"), num_special, path)
    vocab = _field(data, "vocab", list, path)
    ranks = _parse_vocab(vocab, _inner_size(vocab_size, num_special, len(vocab), path), path)
    image = data.get("image", data.get("multimodal"))
    patch = max_size = None
    if image is not None:
        block = "image." if "image" in data else "multimodal."
        patch = _field(image, "image_patch_size", int, path, block)
        max_size = _field(image, "max_image_size", int, path, block)
    return VocabFile(ranks, specials, pattern, patch, max_size)


def read_hf_tokenizer_json(path: Path, vocab_size: int | None) -> VocabFile:
    """Vocab strings are in GPT-2 byte-to-unicode form; ordinary id = rank + number of added specials."""
    data = _read_json(path)
    model = _field(data, "model", dict, path)
    if model.get("type") != "BPE":
        raise InvalidCheckpoint(f"{path}: model.type must be 'BPE', got {model.get('type')!r}")
    specials = _hf_specials(_field(data, "added_tokens", list, path), path)
    pattern = _hf_pattern(data.get("pre_tokenizer"), path)
    by_rank = _hf_ranks(_field(model, "vocab", dict, path, "model."), len(specials), path)
    if vocab_size is None:
        vocab_size = len(specials) + len(by_rank)
    ranks = by_rank[: _inner_size(vocab_size, len(specials), len(by_rank), path)]
    return VocabFile(ranks, specials, pattern)


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise InvalidCheckpoint(f"cannot read tokenizer file {path}: {e.strerror or e}") from e
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise InvalidCheckpoint(f"tokenizer file {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise _bad(path, "top level must be a JSON object")
    return data


def _bad(path: Path, what: str) -> InvalidCheckpoint:
    return InvalidCheckpoint(f"tokenizer file {path}: {what}")


def _field(obj: object, key: str, kind: type, path: Path, where: str = "") -> object:
    if not isinstance(obj, dict) or key not in obj:
        raise _bad(path, f"missing field '{where}{key}'")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _bad(path, f"field '{where}{key}' must be {kind.__name__}, got {type(value).__name__}")
    return value


def _inner_size(vocab_size: int, num_special: int, available: int, path: Path) -> int:
    inner = vocab_size - num_special
    if inner <= 0 or inner > available:
        raise _bad(
            path,
            f"vocab_size {vocab_size} needs {inner} ordinary tokens after "
            f"{num_special} special ones, but the vocab has {available}",
        )
    return inner


def _parse_vocab(vocab: list, n: int, path: Path) -> list[bytes]:
    """First `n` entries of the tekken vocab as bytes; truncation happens before BPE sees the table."""
    ranks: list[bytes] = []
    for i, entry in enumerate(vocab[:n]):
        try:
            rank, raw = entry["rank"], base64.b64decode(entry["token_bytes"], validate=True)
        except (KeyError, TypeError) as e:
            raise _bad(path, f"vocab[{i}] lacks rank/token_bytes ({e!r})") from e
        except (binascii.Error, ValueError) as e:
            raise _bad(path, f"vocab[{i}].token_bytes is not base64: {e}") from e
        if rank != i:
            raise _bad(path, f"vocab[{i}].rank is {rank!r}, expected {i}")
        if i < 256 and raw != bytes((i,)):
            raise _bad(path, f"vocab[{i}] must be the single byte {i}")
        ranks.append(raw)
    _check_unique(ranks, path)
    return ranks


def _check_unique(ranks: list[bytes], path: Path) -> None:
    if len(set(ranks)) != len(ranks):
        seen: set[bytes] = set()
        dup = next(r for r, b in enumerate(ranks) if b in seen or seen.add(b))
        raise _bad(path, f"token bytes of rank {dup} appear twice")


def _parse_specials(entries: object, num_special: int, path: Path) -> list[str]:
    if entries is None:
        names = list(LEGACY_SPECIALS[:num_special])
    else:
        if not isinstance(entries, list):
            raise _bad(path, "'special_tokens' must be a list")
        try:
            by_rank = sorted((e["rank"], e["token_str"]) for e in entries)
        except (KeyError, TypeError) as e:
            raise _bad(path, "special_tokens entries need rank, token_str") from e
        if [r for r, _ in by_rank] != list(range(len(by_rank))) or len(by_rank) > num_special:
            raise _bad(path, f"special_tokens ranks must be 0..n-1 with n <= {num_special}")
        names = [str(s) for _, s in by_rank]
    names += [f"<SPECIAL_{i}>" for i in range(len(names), num_special)]
    if len(set(names)) != len(names):
        raise _bad(path, "special_tokens names must be unique")
    return names


def check_fixed_ids(specials: list[str], path: Path, n_fixed: int) -> None:
    """Prompt code uses the Tekkenizer class ids; a file that moves them would silently break prompts."""
    for i, name in enumerate(LEGACY_SPECIALS[:n_fixed]):
        if i >= len(specials) or specials[i] != name:
            got = specials[i] if i < len(specials) else "nothing"
            raise _bad(path, f"special token {i} must be {name!r}, got {got!r}")


def _hf_specials(added: list, path: Path) -> list[str]:
    try:
        by_id = sorted((t["id"], t["content"]) for t in added)
    except (KeyError, TypeError) as e:
        raise _bad(path, "added_tokens entries need id, content") from e
    if [i for i, _ in by_id] != list(range(len(by_id))):
        raise _bad(path, "added_tokens ids must be 0..n-1 (the control tokens)")
    return [str(c) for _, c in by_id]


def _hf_pattern(pre: object, path: Path) -> str:
    steps = pre.get("pretokenizers", []) if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    for step in steps:
        if isinstance(step, dict) and step.get("type") == "ByteLevel" and step.get("add_prefix_space"):
            raise _bad(path, "ByteLevel add_prefix_space is not tekken")
    for step in steps:
        if isinstance(step, dict) and step.get("type") == "Split":
            regex = step.get("pattern", {}).get("Regex") if isinstance(step.get("pattern"), dict) else None
            if isinstance(regex, str):
                return regex
    raise _bad(path, "pre_tokenizer needs a Split step with a Regex pattern")


def _hf_ranks(vocab: dict, num_special: int, path: Path) -> list[bytes]:
    to_byte = {c: b for b, c in _bytes_to_unicode().items()}
    found: dict[int, bytes] = {}
    for text, tid in vocab.items():
        if not isinstance(tid, int) or tid < num_special:
            continue  # the converter also lists control tokens in model.vocab
        try:
            found[tid - num_special] = bytes(map(to_byte.__getitem__, text))
        except KeyError as e:
            raise _bad(path, f"model.vocab entry {text!r} is not byte-level") from e
    if sorted(found) != list(range(len(found))):
        raise _bad(path, "model.vocab ids must be contiguous after the specials")
    ranks = [found[r] for r in range(len(found))]
    for i in range(min(256, len(ranks))):
        if ranks[i] != bytes((i,)):
            raise _bad(path, f"model.vocab id {i + num_special} must be byte {i}")
    _check_unique(ranks, path)
    return ranks


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (what HF byte-level vocab strings use)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table
