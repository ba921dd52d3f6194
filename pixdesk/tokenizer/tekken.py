"""Tekken (Mistral's tiktoken-style byte-level BPE) tokenizer: load, encode, decode, stream-decode.

Id layout (PIXTRAL.md section 5.3): ids 0..num_special-1 are control tokens, ordinary id = rank + num_special,
and only the first `vocab_size - num_special` ranks of the file exist for the model. Control-token strings
in user text are plain text: they are never matched as specials.
"""

from __future__ import annotations

import codecs
import enum
import operator
from collections.abc import Iterable
from pathlib import Path

import tiktoken

from pixdesk.errors import InvalidCheckpoint, TokenizerError
from pixdesk.tokenizer.vocab_files import VocabFile, check_fixed_ids, read_hf_tokenizer_json, read_tekken_json

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
        check_fixed_ids(specials, source, self.IMG_END + 1)
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
        return cls._from_vocab(read_tekken_json(Path(path), vocab_size), Path(path))

    @classmethod
    def from_hf_tokenizer_json(cls, path: str | Path, *, vocab_size: int | None = None) -> Tekkenizer:
        """Load an HF `tokenizer.json` converted from tekken (byte-level BPE vocab + added specials)."""
        return cls._from_vocab(read_hf_tokenizer_json(Path(path), vocab_size), Path(path))

    @classmethod
    def _from_vocab(cls, v: VocabFile, source: Path) -> Tekkenizer:
        return cls(
            ranks=v.ranks, specials=v.specials, pattern=v.pattern, source=source,
            image_patch_size=v.image_patch_size, max_image_size=v.max_image_size,
        )  # fmt: skip

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
