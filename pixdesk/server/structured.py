"""response_format and tools -> LogitMask and tool-call parser, through engine/grammar.py and
tokenizer/tools.py (imported on first use, so plain chat needs no grammar engine).

Masks are built here, in a worker thread, and handed to `engine.submit(mask=...)`: the engine's grammar
factory compiles a schema in about a millisecond but builds its tokenizer (~1 s) on first use, and neither
should run on the event loop.
"""

from __future__ import annotations

from pixdesk.engine.sampling import SamplingParams
from pixdesk.errors import InvalidRequest
from pixdesk.server.openai import ChatRequest


def parse_tools(raw: list | None):
    if raw is None:
        return None
    from pixdesk.tokenizer.tools import parse_tools

    return parse_tools(raw)


def grammar(engine):
    factory = getattr(engine, "grammar", None)
    if factory is None:
        raise InvalidRequest("this engine has no grammar support: response_format and tools are unavailable",
                             param="response_format")  # fmt: skip
    return factory


def build_mask(engine, req: ChatRequest, tools, params: SamplingParams):
    """(mask or None, tool-call parser or None, the token that starts a call or None)."""
    rf = req.response_format
    wants_format = rf is not None and rf.get("type") != "text"
    if wants_format and tools is not None and req.tool_choice != "none":
        raise InvalidRequest(
            "response_format json_object/json_schema cannot be combined with tools", param="response_format"
        )
    if wants_format:
        from pixdesk.engine.grammar import mask_for_response_format

        return mask_for_response_format(grammar(engine), rf, params), None, None
    if rf is not None and set(rf) != {"type"}:
        raise InvalidRequest(
            'response_format {"type": "text"} takes no other fields', param="response_format"
        )
    if tools is None:
        return None, None, None
    from pixdesk.tokenizer.tools import parse_tool_calls, tool_call_mask

    mask = tool_call_mask(
        grammar(engine), tools, req.tool_choice, params.max_tokens, parallel=req.parallel_tool_calls
    )

    def parse(text: str) -> list[dict]:
        return [c.as_openai() for c in parse_tool_calls(text, tools)]

    return mask, parse, engine.tokenizer.TOOL_CALLS
