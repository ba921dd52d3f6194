"""ask: a free question about one or more images, answered in Markdown."""

from __future__ import annotations

from pixdesk.tasks.base import Task, TaskOptions, TaskResult

SYSTEM = (
    "Answer the question about the image(s) accurately and concisely, in Markdown. When the image does not "
    "show what is asked, say so instead of guessing. Quote on-screen text exactly."
)


def postprocess(text: str, options: TaskOptions) -> TaskResult:
    answer = text.strip()
    return TaskResult("ask", text, None, {"markdown": answer})


TASK = Task(
    name="ask",
    description="A free question about one or more images",
    system_prompt=SYSTEM,
    instruction="",
    postprocess=postprocess,
    max_tokens=1024,
    needs_question=True,
)
