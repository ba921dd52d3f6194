"""Task recipes on the engine API: ask, html (image -> HTML), chart (chart -> table/JSON), receipt (-> JSON).

Each task = a system prompt for Pixtral's format + an output schema + post-processing; `registry` lists them
and `run_task` / `stream_task` / `start_task` run one for any front.
"""

from pixdesk.tasks.base import Task, TaskOptions, TaskResult
from pixdesk.tasks.run import TaskRun, get_task, registry, run_task, start_task, stream_task

__all__ = ["Task", "TaskOptions", "TaskResult", "TaskRun", "get_task", "registry", "run_task", "start_task",
           "stream_task"]  # fmt: skip
