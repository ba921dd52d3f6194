"""Tekken (Mistral's tiktoken-style byte-level BPE) tokenizer: load, encode, decode, stream-decode.

Id layout (PIXTRAL.md section 5.3): ids 0..num_special-1 are control tokens, ordinary id = rank + num_special,
and only the first `vocab_size - num_special` ranks of the file exist for the model. Control-token strings
in user text are plain text: they are never matched as specials.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import enum
import json
import operator
from collections.abc import Iterable
from pathlib import Path

import tiktoken

from pixdesk.errors import InvalidCheckpoint, TokenizerError

# Names used when a tokenizer file has no `special_tokens` list (all Pixtral-12B files). Ids 17..19 follow
# mistral_common 1.13.1; the Sept-2024 library called them <SPECIAL_17..19>. v3 prompts never emit them.
_LEGACY_SPECIALS = (
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
    "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
)  # fmt: skip
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit)


class SpecialTokenPolicy(enum.Enum):
    IGNORE = "ignore"  # drop control tokens from decoded text
    KEEP = "keep"  # render them by name, e.g. "[INST]"
    RAISE = "raise"  # TokenizerError if one appears


class Tekkenizer:
    UNK = 0
    BOS = 1
    EOS = 2
    INST = 3
    INST_END = 4
    AVAILABLE_TOOLS = 5
    AVAILABLE_TOOLS_END = 6
    TOOL_RESULTS = 7
    TOOL_RESULTS_END = 8
    TOOL_CALLS = 9
    IMG = 10
    PAD = 11
    IMG_BREAK = 12
    IMG_END = 13

    def __init__(
        self,
        *,
        ranks: list[bytes],
        specials: list[str],
        pattern: str,
        source: Path,
        image_patch_size: int | None = None,
        max_image_size: int | None = None,
    ) -> None:
        """Build from validated parts; use `from_file` / `from_hf_tokenizer_json` for files.

        `ranks[r]` is the byte string of rank r, already truncated to the model's vocabulary.
        """
        self.num_special = len(specials)
        self.n_words = self.num_special + len(ranks)
        self.image_patch_size = image_patch_size
        self.max_image_size = max_image_size
        self.source = source
        self._specials = specials
        self._ranks = ranks
        _check_fixed_ids(specials, source)
        try:
            self._enc = tiktoken.Encoding(
                name=f"pixdesk-tekken-{source.name}",
                pat_str=pattern,
                mergeable_ranks={b: r for r, b in enumerate(ranks)},
                special_tokens={},  # control tokens never come from text
            )
        except _PASS_THROUGH:
            raise
        except BaseException as e:  # ValueError for a bad regex; a Rust panic would be a BaseException
            raise InvalidCheckpoint(
                f"{source}: cannot build the BPE tokenizer (pattern or vocab): {e}"
            ) from e

    @classmethod
    def from_file(cls, path: str | Path, *, vocab_size: int | None = None) -> Tekkenizer:
        """Load a Mistral `tekken.json`; `vocab_size` (params.json) defaults to config.default_vocab_size."""
        path = Path(path)
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
        return cls(
            ranks=ranks, specials=specials, pattern=pattern, source=path,
            image_patch_size=patch, max_image_size=max_size,
        )  # fmt: skip

    @classmethod
    def from_hf_tokenizer_json(cls, path: str | Path, *, vocab_size: int | None = None) -> Tekkenizer:
        """Load an HF `tokenizer.json` converted from tekken (byte-level BPE vocab + added specials).

        Vocab strings are in GPT-2 byte-to-unicode form; ordinary id = rank + number of added specials.
        """
        path = Path(path)
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
        return cls(ranks=ranks, specials=specials, pattern=pattern, source=path)

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"encode() needs a str, got {type(text).__name__}")
        try:
            ranks = self._enc.encode_ordinary(text)
        except _PASS_THROUGH:
            raise
        except BaseException as e:
            # A Rust panic inside tiktoken is a BaseException (pyo3 PanicException); workers that catch only
            # Exception would die, so it becomes a typed error here.
            raise TokenizerError(
                f"tokenizer failed on a text of {len(text)} characters: {type(e).__name__}: {e}"
            ) from e
        ns = self.num_special
        ids = [r + ns for r in ranks]
        if bos:
            ids.insert(0, self.BOS)
        if eos:
            ids.append(self.EOS)
        return ids

    def decode(self, ids: Iterable[int], *, special: SpecialTokenPolicy = SpecialTokenPolicy.IGNORE) -> str:
        """Runs of ordinary ids are joined as bytes and decoded with U+FFFD for invalid UTF-8.

        A control token ends a run even when ignored, as in mistral_common.
        """
        parts: list[str] = []
        run: list[bytes] = []
        for token in ids:
            i = self._check_id(token)
            if i >= self.num_special:
                run.append(self._ranks[i - self.num_special])
                continue
            if run:
                parts.append(b"".join(run).decode("utf-8", errors="replace"))
                run = []
            parts.append(self._special_text(i, special))
        if run:
            parts.append(b"".join(run).decode("utf-8", errors="replace"))
        return "".join(parts)

    def id_to_piece(self, i: int) -> str:
        """Control tokens by name ("[IMG]", "<SPECIAL_20>"); ordinary tokens as text (U+FFFD if partial)."""
        i = self._check_id(i)
        if i < self.num_special:
            return self._specials[i]
        return self._ranks[i - self.num_special].decode("utf-8", errors="replace")

    def id_to_bytes(self, i: int) -> bytes:
        """Raw bytes of an ordinary token; the UTF-8 name of a control token."""
        i = self._check_id(i)
        if i < self.num_special:
            return self._specials[i].encode("utf-8")
        return self._ranks[i - self.num_special]

    def is_special(self, i: int) -> bool:
        return 0 <= i < self.num_special

    def stream_decoder(self, *, special: SpecialTokenPolicy = SpecialTokenPolicy.IGNORE) -> StreamDecoder:
        return StreamDecoder(self, special)

    def _check_id(self, token: int) -> int:
        try:
            i = operator.index(token)
        except TypeError:
            raise TokenizerError(f"token ids must be integers, got {type(token).__name__}") from None
        if not 0 <= i < self.n_words:
            raise TokenizerError(f"token id {i} is outside the vocabulary (0..{self.n_words - 1})")
        return i

    def _special_text(self, i: int, policy: SpecialTokenPolicy) -> str:
        if policy is SpecialTokenPolicy.KEEP:
            return self._specials[i]
        if policy is SpecialTokenPolicy.RAISE:
            raise TokenizerError(f"control token {i} ({self._specials[i]}) in text that must not contain any")
        return ""


class StreamDecoder:
    """Incremental decode for streaming: never emits part of a multi-byte UTF-8 character.

    The total of all `push` results plus `flush()` equals `Tekkenizer.decode` of the same ids.
    """

    def __init__(self, tok: Tekkenizer, special: SpecialTokenPolicy) -> None:
        self._tok = tok
        self._special = special
        # Python's incremental UTF-8 decoder holds back an incomplete tail and replaces invalid bytes
        # exactly as a one-shot decode would.
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        tok = self._tok
        i = tok._check_id(token_id)
        if i >= tok.num_special:
            return self._utf8.decode(tok._ranks[i - tok.num_special])
        text = tok._special_text(i, self._special)  # raise before touching the buffer
        return self._utf8.decode(b"", final=True) + text

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


def find_tokenizer_file(model_dir: str | Path) -> Path:
    """`tekken.json` if present (authoritative), else an HF `tokenizer.json`."""
    model_dir = Path(model_dir)
    for name in ("tekken.json", "tokenizer.json"):
        if (model_dir / name).is_file():
            return model_dir / name
    raise InvalidCheckpoint(f"no tokenizer in {model_dir}: expected tekken.json or tokenizer.json")


def load_tokenizer(model_dir: str | Path, *, vocab_size: int | None = None) -> Tekkenizer:
    path = find_tokenizer_file(model_dir)
    if path.name == "tekken.json":
        return Tekkenizer.from_file(path, vocab_size=vocab_size)
    return Tekkenizer.from_hf_tokenizer_json(path, vocab_size=vocab_size)


# -- file parsing -------------------------------------------------------------------------------------------


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
        names = list(_LEGACY_SPECIALS[:num_special])
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


def _check_fixed_ids(specials: list[str], path: Path) -> None:
    """Prompt code uses the Tekkenizer class ids; a file that moves them would silently break prompts."""
    for i, name in enumerate(_LEGACY_SPECIALS[: Tekkenizer.IMG_END + 1]):
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
