"""Running a task on the engine API: images (bytes) + options -> prompt, params, grammar mask -> TaskResult.

The HTTP, stdio, MCP and CLI fronts call these; they differ only in how they iterate the Submission (sync
`for`, or `async for` inside an event loop), so `start_task` returns the submission and `TaskRun.result`
turns the collected text into the task's result.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pixdesk.engine.backend import Engine
from pixdesk.engine.events import Delta, Finish
from pixdesk.engine.grammar import GrammarFactory
from pixdesk.engine.sequence import LogitMask, Submission
from pixdesk.errors import Cancelled, InvalidRequest
from pixdesk.tasks import ask, chart, html, receipt
from pixdesk.tasks.base import Task, TaskOptions, TaskResult

registry: dict[str, Task] = {t.name: t for t in (ask.TASK, html.TASK, chart.TASK, receipt.TASK)}


def get_task(name: str) -> Task:
    if name not in registry:
        raise InvalidRequest(f"unknown task {name!r}; the tasks are {', '.join(registry)}", param="task")
    return registry[name]


@dataclass
class TaskRun:
    task: Task
    options: TaskOptions
    submission: Submission
    mask: LogitMask | None

    def result(self, text: str, finish: Finish) -> TaskResult:
        """The post-processed answer; a failed or cancelled generation raises its typed error instead."""
        if finish.reason == "error":
            raise finish.error
        if finish.reason == "cancelled":
            raise Cancelled("the task was cancelled")
        result = self.task.postprocess(text, self.options)
        result.finish_reason, result.usage = finish.reason, finish.usage
        if finish.reason == "length":
            result.warnings.append(
                f"the answer was cut at max_tokens ({finish.usage.completion_tokens} tokens)"
            )
        return result


def start_task(
    engine: Engine,
    name: str,
    images: list[bytes],
    options: TaskOptions | dict | None = None,
    *,
    grammar: GrammarFactory | None = None,
) -> TaskRun:
    """Validate, build the prompt and submit. Schema tasks are grammar-constrained when a factory is at hand
    (given, or the engine's `grammar`); without one (remote engines) the answer is post-processed as text."""
    task = get_task(name)
    opts = options if isinstance(options, TaskOptions) else TaskOptions.from_dict(options)
    if not isinstance(images, list) or not all(isinstance(b, (bytes, bytearray)) for b in images):
        raise InvalidRequest("images must be a list of image bytes", param="images")
    prepared = [engine.prepare_image(bytes(b)) for b in images]
    prompt = engine.encode_chat(task.build_messages(prepared, opts))
    params = task.default_params(opts)
    grammar = grammar or getattr(engine, "grammar", None)
    mask = None
    if task.schema is not None and grammar is not None:
        mask = grammar.json_schema(task.schema, params.max_tokens, param=f"task {name} schema")
    submission = engine.submit(prompt, params, priority=opts.priority, client_id=opts.client_id, mask=mask)
    return TaskRun(task, opts, submission, mask)


def run_task(
    engine: Engine,
    name: str,
    images: list[bytes],
    options: TaskOptions | dict | None = None,
    *,
    grammar: GrammarFactory | None = None,
) -> TaskResult:
    """Run a task to completion (sync callers)."""
    run = start_task(engine, name, images, options, grammar=grammar)
    text, finish = run.submission.text()
    return run.result(text, finish)


def stream_task(
    engine: Engine,
    name: str,
    images: list[bytes],
    options: TaskOptions | dict | None = None,
    *,
    grammar: GrammarFactory | None = None,
) -> Iterator[Delta | TaskResult]:
    """Text deltas as they are generated, then the TaskResult (sync callers)."""
    run = start_task(engine, name, images, options, grammar=grammar)
    parts: list[str] = []
    for event in run.submission:
        if isinstance(event, Delta):
            parts.append(event.text)
            if event.text:
                yield event
        else:
            yield run.result("".join(parts), event)
