"""What a task is: a system prompt written for Pixtral's v3 format, an output schema, and post-processing.

Pixtral-12B-2409 has no system token: chat.py puts the system prompt in front of the last user turn, and a
user turn of [question, image] is sent image first. So a task prompt reads as one instruction that follows
the images; JSON tasks also show the exact shape, since the grammar constrains syntax but not meaning.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from pixdesk.engine.events import Usage
from pixdesk.engine.sampling import SamplingParams
from pixdesk.errors import InvalidRequest
from pixdesk.tokenizer.chat import ChatMessage, ImageChunk, TextChunk
from pixdesk.tokenizer.image import PreparedImage

MAX_QUESTION_CHARS = 8000


@dataclass
class TaskResult:
    task: str
    text: str  # the model's raw text
    data: dict | None  # the structured answer (None for free-text tasks)
    rendered: dict[str, str] = field(default_factory=dict)  # "markdown", "csv", "json", "html"
    warnings: list[str] = field(default_factory=list)  # problems found, reported rather than repaired
    finish_reason: str = "stop"
    usage: Usage | None = None

    def to_dict(self) -> dict:
        usage = None
        if self.usage is not None:
            u = self.usage
            usage = {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                     "total_tokens": u.total_tokens}  # fmt: skip
        return {
            "task": self.task, "text": self.text, "data": self.data, "rendered": self.rendered,
            "warnings": self.warnings, "finish_reason": self.finish_reason, "usage": usage,
        }  # fmt: skip


@dataclass(frozen=True)
class TaskOptions:
    question: str | None = None  # `ask`: required; other tasks: extra instructions appended to the prompt
    max_tokens: int | None = None  # None: the task's default
    temperature: float | None = None
    seed: int | None = None
    tailwind: bool = False  # `html`: allow Tailwind utility classes (CDN script in <head>)
    priority: str = "interactive"
    client_id: str = "local"

    @classmethod
    def from_dict(cls, d: dict | None) -> TaskOptions:
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidRequest(f"unknown task options: {sorted(unknown)}", param="options")
        opts = cls(**d)
        if opts.question is not None and (
            not isinstance(opts.question, str) or len(opts.question) > MAX_QUESTION_CHARS
        ):
            raise InvalidRequest(f"options.question must be text of at most {MAX_QUESTION_CHARS} characters",
                                 param="options.question")  # fmt: skip
        if not isinstance(opts.tailwind, bool):
            raise InvalidRequest("options.tailwind must be true or false", param="options.tailwind")
        return opts


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    system_prompt: str
    instruction: str  # the user text sent after the images when no question is given
    postprocess: Callable[[str, TaskOptions], TaskResult]
    schema: dict | None = None  # JSON schema the output is constrained to
    max_tokens: int = 1024
    needs_question: bool = False
    system_for: Callable[[TaskOptions], str] | None = None  # option-dependent system prompt

    def build_messages(
        self, images: list[PreparedImage], options: TaskOptions = TaskOptions()
    ) -> list[ChatMessage]:
        if not images:
            raise InvalidRequest(f"the {self.name} task needs at least one image", param="images")
        question = (options.question or "").strip()
        if self.needs_question and not question:
            raise InvalidRequest(f"the {self.name} task needs a question", param="options.question")
        text = question if self.needs_question else self.instruction + (f"\n\n{question}" if question else "")
        system = self.system_for(options) if self.system_for else self.system_prompt
        content = [*(ImageChunk(i) for i in images), TextChunk(text)]
        return [ChatMessage("system", system), ChatMessage("user", content)]

    def default_params(self, options: TaskOptions = TaskOptions()) -> SamplingParams:
        return SamplingParams(
            max_tokens=options.max_tokens or self.max_tokens,
            temperature=0.0 if options.temperature is None else options.temperature,
            seed=options.seed,
        )

    def info(self) -> dict:
        return {"name": self.name, "description": self.description, "schema": self.schema}


# ------------------------------------------------------------------------------------------ shared helpers

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """[(language, body)] of Markdown code fences; an unclosed last fence runs to the end of the text."""
    return [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]


def parse_json_output(text: str, warnings: list[str]) -> object:
    """The JSON value in a model answer: the whole text, else a ```json fence, else the outermost {...}.

    Constrained output is always the first case; the others serve unconstrained engines and are reported.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    candidates = [body for lang, body in fenced_blocks(text) if lang in ("json", "")]
    start, end = text.find("{"), text.rfind("}")
    if start >= 0 and end > start:
        candidates.append(text[start : end + 1])
    for c in candidates:
        try:
            value = json.loads(c)
        except json.JSONDecodeError:
            continue
        warnings.append("the answer had text around its JSON; only the JSON was used")
        return value
    raise InvalidRequest("the model's answer contains no JSON object", param="output")


def md_cell(value: object) -> str:
    text = "" if value is None else fmt_number(value) if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def fmt_number(x: float | int | None) -> str:
    if x is None:
        return ""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return str(x)


def table_forms(markdown: str, header: list[str], rows: list[list[object]], data: dict) -> dict[str, str]:
    """The rendered forms every table-shaped task returns: Markdown (given), CSV and JSON."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[c if isinstance(c, str) else fmt_number(c) for c in row] for row in rows])
    return {
        "markdown": markdown,
        "csv": buf.getvalue(),
        "json": json.dumps(data, indent=2, ensure_ascii=False),
    }


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
