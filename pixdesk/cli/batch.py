"""A folder of images through a task, as JSON Lines that survive being stopped at any moment.

Resumable: each file's record is one line, written with a single os.write of the whole line and then
fsync'd (SIGINT/SIGTERM blocked meanwhile), so a stop between writes loses nothing and a SIGKILL or power
cut can only leave a partial *last* line. On start that partial line is cut off (its file is redone) and
every file already named in the output is skipped. Requests go out with `batch` priority, so questions
asked meanwhile are served first; 429 answers are waited out as Retry-After says (cli/remote.py).

Record per file: {"file": NAME, "task", "data", "warnings", "finish_reason", "usage"} or, for a file the
model cannot take (not an image, too large, no JSON in the answer), {"file": NAME, "error": {"code",
"message"}} - written once and not retried; rerun without it in the output to retry it.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import sys
import threading
from pathlib import Path

from pixdesk.cli.common import err, settings_from
from pixdesk.cli.runner import Runner, open_runner
from pixdesk.errors import InvalidRequest, PixdeskError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
# Errors that belong to one file (recorded, not retried); anything else stops the job.
FILE_ERRORS = (
    "invalid_image",
    "image_too_large",
    "unsupported_image_format",
    "not_a_regular_file",
    "context_length_exceeded",
)
_BLOCKED = {signal.SIGINT, signal.SIGTERM}


def list_images(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InvalidRequest(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def recover(path: Path) -> tuple[set[str], int]:
    """Names already in the output, and how many bytes of a partial last line were cut off."""
    if not path.exists():
        return set(), 0
    fd = os.open(path, os.O_RDWR)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        data = b"".join(chunks)
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            os.ftruncate(fd, keep)
            os.fsync(fd)
    finally:
        os.close(fd)
    done = set()
    for number, line in enumerate(data[:keep].splitlines(), 1):
        if not line.strip():
            continue
        try:
            done.add(json.loads(line)["file"])
        except (ValueError, KeyError, TypeError):
            raise InvalidRequest(
                f"{path} line {number} is not a pixdesk record; give another --jsonl file or remove that line"
            ) from None
    return done, len(data) - keep


class LineWriter:
    """Appends whole lines durably: one os.write of the full line, then fsync."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)

    def write(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        masked = hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()
        if masked:
            old = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
        try:
            written = os.write(self.fd, line)
            while written < len(line):  # a short write (disk nearly full): finish the same line
                written += os.write(self.fd, line[written:])
            os.fsync(self.fd)
        finally:
            if masked:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a pending Ctrl-C arrives now

    def close(self) -> None:
        os.close(self.fd)


def run_folder(ns: argparse.Namespace, task: str, folder: Path) -> int:
    if ns.jsonl is None:
        raise InvalidRequest("a folder needs --jsonl OUT.jsonl (one line per file; rerunning resumes)")
    if ns.jobs < 1:
        raise InvalidRequest("--jobs must be at least 1")
    settings = settings_from(ns)
    files = list_images(folder)
    done, cut = recover(ns.jsonl)
    if cut:
        err(f"pixdesk: {ns.jsonl} ended in a partial line ({cut} bytes, from an interrupted run); cut it off")
    todo = [p for p in files if p.name not in done]
    err(
        f"pixdesk: {len(files)} images in {folder}; {len(files) - len(todo)} already in {ns.jsonl}, "
        f"{len(todo)} to do"
    )
    if not todo:
        return 0
    from pixdesk.cli.tasks import options_from

    options = options_from(ns, priority="batch")
    runner = open_runner(ns, settings, batch=True)
    writer = LineWriter(ns.jsonl)
    progress = Progress(len(files), len(files) - len(todo))
    try:
        for record in _results(runner, task, todo, options, settings.images.max_bytes, ns.jobs):
            writer.write(record)
            progress.step(record)
    except KeyboardInterrupt:
        progress.end()
        err(
            f"pixdesk: interrupted; {progress.done} of {len(files)} are in {ns.jsonl}. "
            "Run the same command again to do the rest."
        )
        return 130
    finally:
        writer.close()
        runner.close()
    progress.end()
    errors = progress.errors
    err(f"pixdesk: all {len(files)} in {ns.jsonl}" + (f" ({errors} with errors)" if errors else ""))
    return 0


def _results(runner: Runner, task: str, todo: list[Path], options: dict, max_bytes: int, jobs: int):
    """Records as workers finish them (any order). Worker threads are daemons: an interrupt or a fatal error
    leaves them behind, and closing their connections cancels their generations at the daemon."""
    work: queue.Queue[Path] = queue.Queue()
    for path in todo:
        work.put(path)
    results: queue.Queue[dict | BaseException] = queue.Queue()
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            try:
                path = work.get_nowait()
            except queue.Empty:
                return
            try:
                results.put(_one(runner, task, path, options, max_bytes))
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                results.put(exc)
                return

    for _ in range(min(jobs, len(todo))):
        threading.Thread(target=worker, name="pixdesk-batch", daemon=True).start()
    try:
        for _ in todo:
            while True:
                try:
                    item = results.get(timeout=0.5)  # a timeout keeps Ctrl-C deliverable
                    break
                except queue.Empty:
                    continue
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def _one(runner: Runner, task: str, path: Path, options: dict, max_bytes: int) -> dict:
    from pixdesk.inputs import read_image_file

    try:
        image = read_image_file(path, max_bytes=max_bytes)
        result = next(iter(runner.task(task, [image], options)))
    except PixdeskError as exc:
        no_answer = exc.code == "invalid_request" and exc.param == "output"  # no JSON in the answer
        if exc.code not in FILE_ERRORS and not no_answer:
            raise
        return {"file": path.name, "error": {"code": exc.code, "message": exc.message}}
    keep = ("task", "data", "warnings", "finish_reason", "usage")
    return {"file": path.name, **{k: result.get(k) for k in keep}}


class Progress:
    """A bar on stderr when it is a terminal, else one line per file."""

    def __init__(self, total: int, done: int):
        self.total, self.done, self.errors = total, done, 0
        self.tty = sys.stderr.isatty()

    def step(self, record: dict) -> None:
        self.done += 1
        self.errors += "error" in record
        if self.tty:
            filled = 30 * self.done // self.total
            err(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total}", end="")
        else:
            status = record["error"]["code"] if "error" in record else "ok"
            err(f"pixdesk: {self.done}/{self.total} {record['file']}: {status}")

    def end(self) -> None:
        if self.tty:
            err("")
