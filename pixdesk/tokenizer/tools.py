"""OpenAI-style tool calls in Pixtral's instruct-v3 format: prompt encoding, the call mask, and the parser.

The encoding reproduces mistral_common 1.13.1 (`InstructTokenizerV3`, `normalize.py`) token for token:

    tools [f], user "Weather?", assistant calls f({"city": "Oslo"}) as id "abc123def", tool result "7C"
    -> <s>[AVAILABLE_TOOLS][{"type": "function", "function": {...}}][/AVAILABLE_TOOLS][INST]Weather?[/INST]
       [TOOL_CALLS][{"name": "f", "arguments": {"city": "Oslo"}, "id": "abc123def"}]</s>
       [TOOL_RESULTS]{"content": "7C", "call_id": "abc123def"}[/TOOL_RESULTS]

The tool list sits right before the *last* [INST]; every assistant tool call and tool result is kept (v3).
The model answers a call with `[TOOL_CALLS]` + a JSON array of {"name", "arguments"} + `</s>`.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from dataclasses import dataclass, field

import torch

from pixdesk.engine.grammar import JSON_OPTIONS, GrammarFactory, GrammarMask
from pixdesk.errors import InvalidRequest
from pixdesk.tokenizer.chat import (  # the v3 user-turn pieces, shared rather than copied
    ChatMessage,
    EncodedPrompt,
    Turn,
    encode_user_turn,
    merge_content,
    system_prompt,
)
from pixdesk.tokenizer.tekken import Tekkenizer

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_TOOLS = 64
MAX_PARALLEL_CALLS = 8


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str = ""
    parameters: dict = field(default_factory=dict)

    def as_v3(self) -> dict:
        # Key order matters: it is the order mistral_common's model_dump writes.
        fn = {"name": self.name, "description": self.description, "parameters": self.parameters}
        return {"type": "function", "function": fn}


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it

    def as_openai(self) -> dict:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass
class AssistantToolCalls:
    """An assistant turn that called tools (OpenAI: role "assistant" with tool_calls and no content)."""

    tool_calls: list[ToolCall]
    role: str = "assistant"


@dataclass
class ToolResult:
    """A tool's answer (OpenAI: role "tool", tool_call_id, content)."""

    call_id: str
    content: str
    name: str | None = None
    role: str = "tool"


Message = ChatMessage | AssistantToolCalls | ToolResult


# ---------------------------------------------------------------------------------------------- parsing in


def parse_tools(tools: object, param: str = "tools") -> list[ToolSpec]:
    """OpenAI `tools` ([{"type": "function", "function": {name, description?, parameters?, strict?}}])."""
    if not isinstance(tools, list) or not 1 <= len(tools) <= MAX_TOOLS:
        raise InvalidRequest(f"{param} must be a list of 1 to {MAX_TOOLS} tools", param=param)
    specs = []
    for i, t in enumerate(tools):
        where = f"{param}[{i}]"
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("function"), dict):
            raise InvalidRequest(f'{where} must be {{"type": "function", "function": {{...}}}}', param=where)
        fn = t["function"]
        name, desc, params = fn.get("name"), fn.get("description", ""), fn.get("parameters", {})
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidRequest(
                f"{where}.function.name must match [a-zA-Z0-9_-]{{1,64}}", param=f"{where}.function.name"
            )
        if not isinstance(desc, str):
            raise InvalidRequest(
                f"{where}.function.description must be a string", param=f"{where}.function.description"
            )
        if not isinstance(params, dict):
            raise InvalidRequest(f"{where}.function.parameters must be a JSON schema object",
                                 param=f"{where}.function.parameters")  # fmt: skip
        specs.append(ToolSpec(name, desc, params))
    if len({s.name for s in specs}) != len(specs):
        raise InvalidRequest(f"{param}: tool names must be unique", param=param)
    return specs


def new_call_id() -> str:
    """9 alphanumerics: the only id shape mistral_common's v3 validator accepts."""
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(9))


# ---------------------------------------------------------------------------------------------- encoding


def encode_with_tools(
    tok: Tekkenizer, messages: list[Message], tools: list[ToolSpec] | None
) -> EncodedPrompt:
    """Instruct-v3 prompt with tool definitions, assistant tool calls and tool results (module docstring)."""
    _validate(messages)
    system = system_prompt([m for m in messages if isinstance(m, ChatMessage)])
    turns = _turns(messages)
    last_user = max(i for i, t in enumerate(turns) if t.role == "user")
    out = EncodedPrompt(ids=[tok.BOS])
    for i, turn in enumerate(turns):
        if turn.role == "user":
            if i == last_user and tools:
                _emit(tok, out, tok.AVAILABLE_TOOLS, [t.as_v3() for t in tools], tok.AVAILABLE_TOOLS_END)
            encode_user_turn(tok, turn, system if i == last_user else None, out)
        elif turn.role == "tool":
            result = turn.contents[0]
            body = {"content": _json_or_text(result.content, empty="{}"), "call_id": result.call_id}
            _emit(tok, out, tok.TOOL_RESULTS, body, tok.TOOL_RESULTS_END)
        elif turn.calls:
            calls = [_call_v3(c) for c in turn.calls]
            _emit(tok, out, tok.TOOL_CALLS, calls, None if turn.prefix else tok.EOS)
        else:
            out.ids += tok.encode(str(turn.content).rstrip(" "))
            if not turn.prefix:
                out.ids.append(tok.EOS)
    return out


@dataclass
class _ToolTurn(Turn):
    calls: list[ToolCall] = field(default_factory=list)


def _turns(messages: list[Message]) -> list[_ToolTurn]:
    """Merge consecutive user/assistant messages (system messages separate runs); tool results stay single."""
    turns: list[_ToolTurn] = []
    prev = None
    for m in messages:
        if m.role != "system":
            calls = list(m.tool_calls) if isinstance(m, AssistantToolCalls) else []
            content = (
                [] if isinstance(m, AssistantToolCalls) else m if isinstance(m, ToolResult) else m.content
            )
            prefix = getattr(m, "prefix", False)
            if m.role == prev and m.role in ("user", "assistant"):
                turns[-1].contents.append(content)
                turns[-1].calls += calls
                turns[-1].prefix = prefix
            else:
                turns.append(_ToolTurn(m.role, [content], prefix, calls=calls))
        prev = m.role
    for t in turns:
        if t.role != "tool":
            t.content = merge_content([c for c in t.contents if c != []])
        if t.role == "assistant" and t.calls and t.content:
            raise InvalidRequest("an assistant turn cannot carry both content and tool_calls",
                                 param="messages")  # fmt: skip
    if turns[0].role != "user":
        turns.insert(0, _ToolTurn("user", [], content=""))
    return turns


def _emit(tok: Tekkenizer, out: EncodedPrompt, begin: int, payload: object, end: int | None) -> None:
    out.ids += [begin, *tok.encode(json.dumps(payload, ensure_ascii=False))]
    if end is not None:
        out.ids.append(end)


def _call_v3(call: ToolCall) -> dict:
    d = {"name": call.name, "arguments": _json_or_text(call.arguments, empty="{}")}
    if call.id and call.id != "null":
        d["id"] = call.id
    return d


def _json_or_text(text: str, *, empty: str) -> object:
    """mistral_common's normalization: JSON text becomes its value, other text stays a string."""
    try:
        return json.loads(text or empty)
    except json.JSONDecodeError:
        return text


def _validate(messages: list[Message]) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list of chat messages", param="messages")
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if isinstance(m, ToolResult):
            if not isinstance(m.call_id, str) or not m.call_id or not isinstance(m.content, str):
                raise InvalidRequest(
                    f"{where}: a tool message needs tool_call_id and text content", param=where
                )
        elif isinstance(m, AssistantToolCalls):
            if not m.tool_calls or not all(
                isinstance(c, ToolCall) and _NAME.match(c.name) for c in m.tool_calls
            ):
                raise InvalidRequest(f"{where}.tool_calls must be a non-empty list of named calls",
                                     param=f"{where}.tool_calls")  # fmt: skip
        elif not isinstance(m, ChatMessage) or m.role not in ("system", "user", "assistant"):
            raise InvalidRequest(
                f"{where}.role must be system, user, assistant or tool", param=f"{where}.role"
            )
        elif m.prefix and (m.role != "assistant" or i != len(messages) - 1):
            raise InvalidRequest(f"{where}.prefix is only allowed on a final assistant message",
                                 param=f"{where}.prefix")  # fmt: skip
    spoken = [m for m in messages if m.role != "system"]
    if not spoken:
        raise InvalidRequest(
            "add a user message: the conversation has only system messages", param="messages"
        )
    last = spoken[-1]
    if last.role == "assistant" and not getattr(last, "prefix", False):
        raise InvalidRequest(
            "the conversation ends with a finished assistant message; end with a user or tool message",
            param="messages",
        )


# ---------------------------------------------------------------------------------------------- the call mask


class NoToolCalls:
    """tool_choice "none": the model may answer in text but never emit [TOOL_CALLS]."""

    def __init__(self, tok: Tekkenizer):
        self.token = tok.TOOL_CALLS

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        out = logits.clone()
        out[self.token] = -torch.inf
        return out

    def accept(self, token: int) -> None:
        pass


def tool_call_mask(
    factory: GrammarFactory,
    tools: list[ToolSpec],
    tool_choice: object,
    max_tokens: int,
    *,
    parallel: bool = True,
) -> ToolCallMask | NoToolCalls:
    """tool_choice "auto": text or a call; "required": a call; a named function: a call of that function.

    Calls are `[TOOL_CALLS]` + a JSON array of {"name": <tool>, "arguments": <that tool's schema>}.
    """
    choice = "auto" if tool_choice is None else tool_choice
    if choice == "none":
        return NoToolCalls(factory.tok)
    chosen = tools
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
        chosen = [t for t in tools if t.name == name]
        if not chosen:
            example = '{"type": "function", "function": {"name": "..."}}'
            raise InvalidRequest(
                f"tool_choice must name one of the tools, e.g. {example}", param="tool_choice"
            )
        parallel = False
    elif choice not in ("auto", "required"):
        raise InvalidRequest("tool_choice must be 'none', 'auto', 'required' or a named function",
                             param="tool_choice")  # fmt: skip
    calls = {
        "type": "array", "minItems": 1, "maxItems": MAX_PARALLEL_CALLS if parallel else 1,
        "items": {"anyOf": [_call_schema(t) for t in chosen]}, "x-guidance": JSON_OPTIONS,
    }  # fmt: skip
    body = f"<[{factory.tok.TOOL_CALLS}]> %json {json.dumps(calls)}"
    # Free text never contains a control token: llguidance allows those only where the grammar names them.
    lark = f"start: {body}" if choice != "auto" else f"start: TEXT | {body}\nTEXT: /(?s:.*)/"
    return ToolCallMask(factory.lark(lark, max_tokens, param="tools"))


def _call_schema(t: ToolSpec) -> dict:
    args = t.parameters or {"type": "object", "properties": {}}
    return {
        "type": "object", "properties": {"name": {"const": t.name}, "arguments": args},
        "required": ["name", "arguments"], "additionalProperties": False,
    }  # fmt: skip


class ToolCallMask:
    """The grammar mask, plus whether the model chose to call (it emitted [TOOL_CALLS])."""

    def __init__(self, inner: GrammarMask):
        self.inner = inner

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        return self.inner.mask(logits)

    def accept(self, token: int) -> None:
        self.inner.accept(token)

    @property
    def called(self) -> bool:
        return self.inner.factory.tok.TOOL_CALLS in self.inner.tokens


# ---------------------------------------------------------------------------------------------- parsing out


def parse_tool_calls(text: str, tools: list[ToolSpec] | None = None) -> list[ToolCall]:
    """The JSON array after [TOOL_CALLS] (the marker itself may be present) -> calls with fresh ids.

    Raises InvalidRequest when the text is not a call list or names an unknown tool.
    """
    body = text.strip().removeprefix("[TOOL_CALLS]").strip()
    try:
        items = json.loads(body)
    except json.JSONDecodeError as e:
        raise InvalidRequest(f"the model's tool call is not JSON: {e}", param="tools") from e
    if isinstance(items, dict):
        items = [items]
    known = {t.name for t in tools} if tools is not None else None
    calls = []
    for item in items if isinstance(items, list) else [None]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or "arguments" not in item:
            raise InvalidRequest('a tool call must be {"name": ..., "arguments": {...}}', param="tools")
        if known is not None and item["name"] not in known:
            raise InvalidRequest(f"the model called an unknown tool {item['name']!r}", param="tools")
        args = item["arguments"]
        text_args = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        calls.append(ToolCall(new_call_id(), item["name"], text_args))
    return calls
