"""The MCP tools: names, input and output schemas, argument checks, and the task each one runs.

Each tool is one task of the registry (pixdesk/tasks) over one image. Arguments are checked here and a bad
one is a PixdeskError naming the field (an `isError` result the agent can read and fix); the result is
the task's `task.result` object as `structuredContent`, plus its rendered form as text.
"""

from __future__ import annotations

from dataclasses import dataclass

from pixdesk.errors import InvalidRequest

IMAGE = {
    "type": "string",
    "description": "the image: an absolute file path or file:// URI inside the client's roots, a data: URI, "
    "or an http(s) URL",
    "minLength": 1,
}
MAX_TOKENS = {"type": "integer", "minimum": 1, "maximum": 8192, "description": "answer length cap (tokens)"}
QUESTION = {"type": "string", "minLength": 1, "maxLength": 8000}
INSTRUCTIONS = {"type": "string", "maxLength": 8000, "description": "extra instructions for the model"}

RESULT_SCHEMA = {
    "type": "object",
    "properties": {
        "task": {"type": "string"},
        "model": {"type": "string"},
        "text": {"type": "string", "description": "the model's raw answer"},
        "data": {"type": ["object", "null"], "description": "the structured answer (JSON tasks)"},
        "rendered": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "markdown / html / csv / json renderings",
        },  # fmt: skip
        "warnings": {"type": "array", "items": {"type": "string"}},
        "finish_reason": {"type": ["string", "null"]},
        "usage": {"type": ["object", "null"]},
    },
    "required": ["task", "text", "data", "rendered", "warnings"],
}


@dataclass(frozen=True)
class ToolSpec:
    name: str
    title: str
    task: str
    description: str
    properties: dict
    required: tuple[str, ...]
    screen: bool = False  # captures the screen or clipboard instead of taking an image argument

    def input_schema(self) -> dict:
        return {"type": "object", "properties": self.properties, "required": list(self.required),
                "additionalProperties": False}  # fmt: skip


TOOLS = [
    ToolSpec("ask_about_image", "Ask about an image", "ask",
             "Answer a question about an image file, data: URI or URL, using the local Pixtral model.",
             {"image": IMAGE, "question": QUESTION, "max_tokens": MAX_TOKENS}, ("image", "question")),
    ToolSpec("ask_about_screen", "Ask about the screen", "ask",
             "Capture the user's screen (or active window, a region, or the clipboard image) and answer a "
             "question about it. Only works when the user started pixdesk mcp with --allow-screen; the user "
             "is notified of every capture.",
             {"question": QUESTION,
              "source": {"type": "string", "enum": ["screen", "window", "region", "clipboard"],
                         "default": "screen"},
              "region": {"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 4,
                         "description": "[x, y, width, height] in screen pixels, for source 'region'"},
              "monitor": {"type": "integer", "minimum": 1, "description": "1-based monitor, for 'screen'"},
              "max_tokens": MAX_TOKENS},
             ("question",), screen=True),
    ToolSpec("image_to_html", "Image to HTML", "html",
             "Turn a screenshot or mock-up of a UI into a self-contained HTML page.",
             {"image": IMAGE, "tailwind": {"type": "boolean", "default": False}, "instructions": INSTRUCTIONS,
              "max_tokens": MAX_TOKENS}, ("image",)),
    ToolSpec("read_chart", "Read a chart", "chart",
             "Read a chart image into a data table (JSON, Markdown and CSV).",
             {"image": IMAGE, "instructions": INSTRUCTIONS, "max_tokens": MAX_TOKENS}, ("image",)),
    ToolSpec("transcribe_receipt", "Transcribe a receipt", "receipt",
             "Transcribe a receipt photo into merchant, date, currency, items and totals (sums are checked).",
             {"image": IMAGE, "instructions": INSTRUCTIONS, "max_tokens": MAX_TOKENS}, ("image",)),
]  # fmt: skip
BY_NAME = {t.name: t for t in TOOLS}


def check_arguments(spec: ToolSpec, args: dict) -> dict:
    """Validate against the input schema by hand (types, bounds, unknown and missing fields)."""
    if not isinstance(args, dict):
        raise InvalidRequest("arguments must be an object", param="arguments")
    for name in args:
        if name not in spec.properties:
            raise InvalidRequest(f"{spec.name} has no argument {name[:60]!r}", param=name)
    for name in spec.required:
        if name not in args:
            raise InvalidRequest(f"{spec.name} needs the argument {name!r}", param=name)
    for name, value in args.items():
        _check(name, value, spec.properties[name])
    return args


def _check(name: str, value, schema: dict) -> None:
    kind = schema.get("type")
    ok = {
        "string": isinstance(value, str),
        "integer": type(value) is int,
        "boolean": isinstance(value, bool),
        "array": isinstance(value, list),
    }[kind]
    if not ok:
        raise InvalidRequest(f"{name} must be a{'n' if kind[0] in 'ai' else ''} {kind}", param=name)
    if kind == "string":
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", 1 << 26):
            raise InvalidRequest(f"{name} has the wrong length", param=name)
        if "enum" in schema and value not in schema["enum"]:
            raise InvalidRequest(f"{name} must be one of {', '.join(schema['enum'])}", param=name)
    if kind == "integer" and not schema.get("minimum", value) <= value <= schema.get("maximum", value):
        raise InvalidRequest(
            f"{name} must be in [{schema.get('minimum')}, {schema.get('maximum')}]", param=name
        )
    if kind == "array":
        if not schema["minItems"] <= len(value) <= schema["maxItems"] or not all(
            type(v) is int for v in value
        ):
            raise InvalidRequest(f"{name} must be [x, y, width, height]", param=name)


def task_options(spec: ToolSpec, args: dict) -> dict:
    opts = {"question": args.get("question") or args.get("instructions") or None}
    if "max_tokens" in args:
        opts["max_tokens"] = args["max_tokens"]
    if "tailwind" in args:
        opts["tailwind"] = args["tailwind"]
    return {k: v for k, v in opts.items() if v is not None}


def result_text(result: dict) -> str:
    """What a text-only client shows: the task's main rendering, then any warnings."""
    rendered = result.get("rendered") or {}
    main = next((rendered[k] for k in ("markdown", "html", "json", "csv") if rendered.get(k)), None)
    text = main if main is not None else result.get("text", "")
    warnings = result.get("warnings") or []
    if warnings:
        text += "\n\nWarnings:\n" + "\n".join(f"- {w}" for w in warnings)
    return text


def structured(result: dict) -> dict:
    keys = ("task", "model", "text", "data", "rendered", "warnings", "finish_reason", "usage")
    return {k: result.get(k) for k in keys if k in result}
