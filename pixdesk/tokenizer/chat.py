"""Prompt token ids for Pixtral-12B-2409 (instruct v3, tekken) and the base model (raw completion).

The instruct rules reproduce mistral_common 1.13.1 (`protocol/instruct/normalize.py` + `InstructTokenizerV3`)
token for token; PIXTRAL.md section 6. Worked example:

    system "SYS", user "Hi", assistant "Hello!", user "Bye"
    -> <s>[INST]Hi[/INST]Hello!</s>[INST]SYS\n\nBye[/INST]

The system prompt goes into the *last* user turn only; v3 has no system token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from pixdesk.errors import InvalidRequest
from pixdesk.tokenizer.image import PreparedImage
from pixdesk.tokenizer.tekken import Tekkenizer

_JOIN = "\n\n"  # between system prompts, merged messages and adjacent text chunks
_ROLES = ("system", "user", "assistant")  # "tool" and assistant tool calls: tokenizer/tools.py
_IMAGE_ROLES = frozenset({"user"})
_MERGED_ROLES = frozenset({"user", "assistant"})  # tool results, when added, stay one turn each


@dataclass(frozen=True)
class TextChunk:
    text: str


@dataclass(frozen=True)
class ImageChunk:
    image: PreparedImage


Chunk = TextChunk | ImageChunk
AnswerLookup = Callable[[str], "list[int] | None"]


@dataclass
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str | list[TextChunk | ImageChunk]
    prefix: bool = False  # final assistant message only: the model continues it


@dataclass
class EncodedPrompt:
    ids: list[int]
    images: list[PreparedImage] = field(default_factory=list)  # in token order


@dataclass
class Turn:
    """Consecutive same-role messages merged; `content` is a str when the turn has no image."""

    role: str
    contents: list[str | list[Chunk]]
    prefix: bool = False
    content: str | list[Chunk] = ""


def encode_instruct(
    tok: Tekkenizer, messages: list[ChatMessage], *, answer_ids: AnswerLookup | None = None
) -> EncodedPrompt:
    """`<s>` + turns; ends with `[/INST]` (generation prompt) or an unfinished assistant prefix.

    `answer_ids` maps an assistant text to the token ids the model generated for it, if known. Re-encoding
    a generated answer can give other (canonical) ids for the same text; reusing the generated ids keeps
    the next turn's prompt equal to what the model saw, so the prefix cache covers the whole history.
    """
    _validate(messages)
    system = system_prompt(messages)
    turns = _merge_turns(messages)
    last_user = max(i for i, t in enumerate(turns) if t.role == "user")
    out = EncodedPrompt(ids=[tok.BOS])
    encoders = {**_TURN_ENCODERS, "assistant": partial(_encode_assistant, answer_ids=answer_ids)}
    for i, turn in enumerate(turns):
        encoders[turn.role](tok, turn, system if i == last_user else None, out)
    return out


def encode_completion(
    tok: Tekkenizer, chunks: list[TextChunk | ImageChunk] | str, *, bos: bool = True
) -> EncodedPrompt:
    """Base-model prompt: `<s>` + text and image grids in document order, no instruct tokens.

    Adjacent text chunks are joined with no separator and encoded together, so splitting a document into
    several chunks does not change its tokens.
    """
    if isinstance(chunks, str):
        chunks = [TextChunk(chunks)]
    _check_chunks(chunks, "prompt", allow_images=True)
    out = EncodedPrompt(ids=[tok.BOS] if bos else [])
    text: list[str] = []
    for chunk in chunks:
        if isinstance(chunk, TextChunk):
            text.append(chunk.text)
            continue
        out.ids += tok.encode("".join(text))
        text = []
        _emit_image(chunk.image, out)
    out.ids += tok.encode("".join(text))
    return out


# -- encoding ---------------------------------------------------------------------------------------------


def encode_user_turn(tok: Tekkenizer, turn: Turn, system: str | None, out: EncodedPrompt) -> None:
    out.ids.append(tok.INST)
    if isinstance(turn.content, str):
        # Text-only turns are encoded as one string with the system prompt (matters when the user text
        # starts with whitespace: "\n\n" + "\n" pre-tokenizes differently from "\n\n\n").
        out.ids += tok.encode(f"{system}{_JOIN}{turn.content}" if system else turn.content)
    else:
        if system:
            out.ids += tok.encode(system + _JOIN)
        for chunk in _image_first(turn.content):
            if isinstance(chunk, TextChunk):
                out.ids += tok.encode(chunk.text)
            else:
                _emit_image(chunk.image, out)
    out.ids.append(tok.INST_END)


def _encode_assistant(
    tok: Tekkenizer,
    turn: Turn,
    system: str | None,
    out: EncodedPrompt,
    answer_ids: AnswerLookup | None = None,
) -> None:
    assert isinstance(turn.content, str), "validation keeps images out of assistant turns"
    # Only spaces are stripped (mistral_common uses rstrip(" ")); a trailing newline stays.
    text = turn.content.rstrip(" ")
    known = answer_ids(text) if answer_ids and not turn.prefix else None
    out.ids += known if known is not None else tok.encode(text)
    if not turn.prefix:
        out.ids.append(tok.EOS)


_TURN_ENCODERS: dict[str, Callable[[Tekkenizer, Turn, str | None, EncodedPrompt], None]] = {
    "user": encode_user_turn,
    "assistant": _encode_assistant,
}


def _emit_image(image: PreparedImage, out: EncodedPrompt) -> None:
    out.ids += image.token_ids()
    out.images.append(image)


def _image_first(content: list[Chunk]) -> list[Chunk]:
    """[text..., image] -> [image, text...]: Pixtral was trained with the image before its question."""
    if len(content) >= 2 and isinstance(content[-1], ImageChunk):
        if all(isinstance(c, TextChunk) for c in content[:-1]):
            return [content[-1], *content[:-1]]
    return content


# -- normalization ----------------------------------------------------------------------------------------


def system_prompt(messages: list[ChatMessage]) -> str | None:
    parts = [merge_content([m.content]) for m in messages if m.role == "system" and m.content]
    return _JOIN.join(str(p) for p in parts) or None


def _merge_turns(messages: list[ChatMessage]) -> list[Turn]:
    """Merge consecutive same-role messages. A system message in between still separates two turns."""
    turns: list[Turn] = []
    prev_role = None
    for m in messages:
        if m.role != "system":
            if m.role == prev_role and m.role in _MERGED_ROLES:
                turns[-1].contents.append(m.content)
                turns[-1].prefix = m.prefix
            else:
                turns.append(Turn(m.role, [m.content], m.prefix))
        prev_role = m.role
    for turn in turns:
        turn.content = merge_content(turn.contents)
    if turns[0].role != "user":
        turns.insert(0, Turn("user", [], content=""))  # v3 prompts always open with [INST]
    return turns


def merge_content(contents: list[str | list[Chunk]]) -> str | list[Chunk]:
    """Join text runs with "\\n\\n" (empty texts dropped); images split runs. A str if there is no image."""
    merged: list[Chunk] = []
    run: list[str] = []
    for content in contents:
        for chunk in [TextChunk(content)] if isinstance(content, str) else content:
            if isinstance(chunk, TextChunk):
                if chunk.text:
                    run.append(chunk.text)
                continue
            if run:
                merged.append(TextChunk(_JOIN.join(run)))
                run = []
            merged.append(chunk)
    if not merged:
        return _JOIN.join(run)
    if run:
        merged.append(TextChunk(_JOIN.join(run)))
    return merged


# -- validation -------------------------------------------------------------------------------------------


def _validate(messages: list[ChatMessage]) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list of chat messages", param="messages")
    for i, m in enumerate(messages):
        _check_message(m, i, is_last=i == len(messages) - 1)
    spoken = [i for i, m in enumerate(messages) if m.role != "system"]
    if not spoken:
        raise InvalidRequest(
            "add a user message: the conversation has only system messages", param="messages"
        )
    k = spoken[-1]
    if messages[k].role == "assistant" and not messages[k].prefix:
        raise InvalidRequest(
            f"messages[{k}] is a finished assistant message; end with a user message, or set prefix=true "
            "on the final assistant message to have the model continue it",
            param=f"messages[{k}].role",
        )


def _check_message(m: ChatMessage, i: int, *, is_last: bool) -> None:
    where = f"messages[{i}]"
    if not isinstance(m, ChatMessage):
        raise InvalidRequest(f"{where} must be a chat message, got {type(m).__name__}", param=where)
    if m.role not in _ROLES:
        raise InvalidRequest(
            f"{where}.role must be one of {', '.join(_ROLES)}; got {m.role!r}", param=f"{where}.role"
        )
    if isinstance(m.content, str):
        text = m.content
    else:
        _check_chunks(m.content, f"{where}.content", allow_images=m.role in _IMAGE_ROLES)
        text = "".join(c.text for c in m.content if isinstance(c, TextChunk))
    if m.prefix and (m.role != "assistant" or not is_last):
        raise InvalidRequest(
            f"{where}.prefix: prefix=true is only allowed on the final message, and only for the assistant",
            param=f"{where}.prefix",
        )
    if m.role == "assistant" and not text:
        raise InvalidRequest(
            f"{where}.content: assistant messages need non-empty text", param=f"{where}.content"
        )


def _check_chunks(chunks: object, where: str, *, allow_images: bool) -> None:
    if not isinstance(chunks, list):
        raise InvalidRequest(f"{where} must be a string or a list of text/image chunks", param=where)
    for j, c in enumerate(chunks):
        if isinstance(c, TextChunk) and isinstance(c.text, str):
            continue
        if isinstance(c, ImageChunk) and isinstance(c.image, PreparedImage):
            if allow_images:
                continue
            raise InvalidRequest(
                f"{where}[{j}]: images are only allowed in user messages; move the image to a user message",
                param=f"{where}[{j}]",
            )
        raise InvalidRequest(
            f"{where}[{j}] must be a text or image chunk, got {type(c).__name__}", param=f"{where}[{j}]"
        )
