"""Where a command's generation runs, behind one interface: the resident daemon (RemoteRunner, the default)
or an engine inside this process (LocalRunner, `--in-process`). Commands never see the difference.

    chat(images, question, system=..., sampling=..., priority=...) -> text deltas, then a Done
    task(name, images, options, stream=...)                        -> text deltas (stream), then the result
The task result is the `task.result` dict of the HTTP API in both cases.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pixdesk.cli.common import err, load_engine_checkpoint, serve_argv
from pixdesk.cli.remote import DaemonSession, data_uri
from pixdesk.config import Settings
from pixdesk.inputs import ImageBytes

DEFAULT_MAX_IMAGE_SIZE = 1024  # Pixtral-12B; the daemon's model card does not say (yet)


@dataclass(frozen=True)
class Done:
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Runner(Protocol):
    max_image_size: int

    def chat(
        self,
        images: list[ImageBytes],
        question: str,
        *,
        system: str | None,
        sampling: dict,
        priority: str = "interactive",
    ) -> Iterator[str | Done]: ...

    def task(
        self, name: str, images: list[ImageBytes], options: dict, *, stream: bool = False
    ) -> Iterator[str | dict]: ...

    def close(self) -> None: ...


def open_runner(ns: argparse.Namespace, settings: Settings, *, batch: bool = False) -> Runner:
    if getattr(ns, "in_process", False):
        return LocalRunner(settings, batch=batch)
    wait_s = max(settings.server.load_wait_s, 30.0)
    session = DaemonSession.connect(serve_argv(ns), wait_s=wait_s, retry_budget_s=3600.0 if batch else 120.0)
    if getattr(ns, "model", None):
        name = session.model_card().get("id", "")
        if name and name != Path(ns.model).name:
            err(
                f"pixdesk: warning: the running daemon serves {name!r}, not {ns.model}; "
                "`pixdesk stop` it to switch models, or pass --in-process"
            )
    return RemoteRunner(session)


class RemoteRunner:
    def __init__(self, session: DaemonSession):
        self.session = session
        self.max_image_size = DEFAULT_MAX_IMAGE_SIZE

    def chat(self, images, question, *, system, sampling, priority="interactive"):
        content = [
            *({"type": "image_url", "image_url": {"url": data_uri(i)}} for i in images),
            {"type": "text", "text": question},
        ]
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": content}
        ]
        body = {
            "model": "pixdesk",
            "messages": messages,
            "priority": priority,
            "stream_options": {"include_usage": True},
            **_drop_none(sampling),
        }
        reason = "stop"
        for chunk in self.session.stream("/v1/chat/completions", body):
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    yield text
                reason = choice.get("finish_reason") or reason
            usage = chunk.get("usage")
            if usage:
                yield Done(reason, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
                return
        yield Done(reason)

    def task(self, name, images, options, *, stream=False):
        body = {"images": [data_uri(i) for i in images], "options": _drop_none(options)}
        if not stream:
            yield self.session.post(f"/v1/tasks/{name}", body)
            return
        for event in self.session.stream(f"/v1/tasks/{name}", body):
            if event.get("object") == "task.result":
                yield event
                return
            if event.get("delta"):
                yield event["delta"]

    def close(self) -> None:
        pass


class LocalRunner:
    """The engine inside this process. One sequence at a time for interactive commands (memory of one KV
    slot); a folder job gets the configured batch and no slot held back for interactive requests."""

    def __init__(self, settings: Settings, *, batch: bool = False):
        from pixdesk.engine.backend import LocalEngine
        from pixdesk.engine.scheduler_config import SchedulerConfig

        ckpt = load_engine_checkpoint(settings)
        e = settings.engine
        config = SchedulerConfig(
            max_batch=e.max_batch if batch else 1,
            max_context=settings.model.max_context,
            max_queue=e.max_queue,
            reserved_interactive=0,
        )
        self.engine = LocalEngine(ckpt, config, images=settings.images).start()
        self.max_image_size = self.engine.info.max_image_size or DEFAULT_MAX_IMAGE_SIZE
        self._lock = threading.Lock()  # prompt building (and the lazy grammar) from several threads

    def chat(self, images, question, *, system, sampling, priority="interactive"):
        from pixdesk.engine.events import Delta
        from pixdesk.engine.sampling import SamplingParams
        from pixdesk.tokenizer.chat import ChatMessage, ImageChunk, TextChunk

        with self._lock:
            prepared = [self.engine.prepare_image(i.data) for i in images]
            content = [*(ImageChunk(p) for p in prepared), TextChunk(question)]
            messages = ([ChatMessage("system", system)] if system else []) + [ChatMessage("user", content)]
            prompt = self.engine.encode_chat(messages)
        params = SamplingParams(**{k: v for k, v in sampling.items() if v is not None})
        submission = self.engine.submit(prompt, params, priority=priority)
        for event in submission:
            if isinstance(event, Delta):
                if event.text:
                    yield event.text
                continue
            if event.reason == "error":
                raise event.error
            yield Done(event.reason, event.usage.prompt_tokens, event.usage.completion_tokens)
            return

    def task(self, name, images, options, *, stream=False):
        from pixdesk.engine.events import Delta
        from pixdesk.tasks import start_task

        with self._lock:
            run = start_task(self.engine, name, [i.data for i in images], _drop_none(options))
        parts: list[str] = []
        for event in run.submission:
            if isinstance(event, Delta):
                parts.append(event.text)
                if stream and event.text:
                    yield event.text
                continue
            result = run.result("".join(parts), event).to_dict()
            yield {"object": "task.result", **result}
            return

    def close(self) -> None:
        self.engine.stop()


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}
