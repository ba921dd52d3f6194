"""Move tensors' bytes from safetensors files to their device with several reader threads.

One thread with `readinto` and a pageable `.to(device)` loads at about 1 GB/s (a 25.4 GB checkpoint in
20-24 s on an H200 host). Page-cache reads scale with threads and a copy from pinned memory runs at
25-50 GB/s, so the data is cut into chunks of contiguous file bytes that N threads read and land at once.
With chunk_bytes = 100 and tensors a (40 bytes), b (250) and c (30) back to back from file offset 8:

    chunk 0  file[8, 108)    segments (a, 0, 40) (b, 0, 60)      segment = (tensor, offset in it, length)
    chunk 1  file[108, 208)  segments (b, 60, 100)
    chunk 2  file[208, 308)  segments (b, 160, 90) (c, 0, 10)
    chunk 3  file[308, 328)  segments (c, 10, 20)

- CPU target: a chunk is read with one `preadv` straight into the final tensors' bytes (no staging).
- CUDA target: a chunk is read into one of the thread's two pinned staging buffers, each segment is copied
  to its device tensor with `non_blocking=True` on the thread's own stream, and an event recorded after the
  copies guards the buffer: the thread waits for it before refilling that buffer, and the consumer makes
  its stream wait for all of a tensor's events before using it. Host memory is the staging buffers only;
  the checkpoint never has a second host copy.

`preadv` and `readinto` release the GIL, so plain threads read in parallel. A destination is allocated when
its first chunk is taken (its final device tensor, in its stored dtype, as flat bytes), and readers stop
taking chunks that need new destinations while `max_ahead` bytes of them wait for the consumer, so the
readers never run far ahead of the model being built. Tensors are yielded as they complete, in any order.
"""

from __future__ import annotations

import io
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from pixdesk.errors import InvalidCheckpoint

CHUNK_BYTES = 64 << 20  # one staging buffer; large enough that per-chunk overhead is noise
MAX_AHEAD = 1 << 30  # allocated, not yet consumed destinations (plus the tensors spanning a chunk)
THREADS = 8  # 12B onto an H200 from the page cache: 4 readers 1.6-8 s, 8 readers 1.1-1.4 s (bench/NOTES.md)
_MAX_SEGMENTS = 512  # one preadv takes at most IOV_MAX (1024 on Linux) buffers
THREAD_PREFIX = "pixdesk-load"


class Stored(Protocol):
    """Where a tensor's bytes live: weights.load.TensorInfo has these fields."""

    file: Path
    name: str
    nbytes: int
    offset: int  # absolute byte offset in the file


@dataclass(frozen=True)
class Chunk:
    """Contiguous bytes of one file; each segment is (tensor index, byte offset in the tensor, length)."""

    file: Path
    offset: int
    nbytes: int
    segments: tuple[tuple[int, int, int], ...]


def plan_chunks(tensors: Sequence[Stored], chunk_bytes: int = CHUNK_BYTES) -> list[Chunk]:
    """Cut the tensors into chunks of at most `chunk_bytes`, file by file, in file order.

    A chunk grows across tensor boundaries while the bytes are contiguous, so small tensors share one read
    and large ones split into equal pieces; a gap between tensors, or a new file, starts a new chunk.
    """
    by_file: dict[Path, list[int]] = {}
    for k, t in enumerate(tensors):
        by_file.setdefault(t.file, []).append(k)
    chunks: list[Chunk] = []
    for path, ks in by_file.items():
        start, end, segs = 0, 0, []
        for k in sorted(ks, key=lambda k: tensors[k].offset):
            t, pos = tensors[k], 0
            while pos < t.nbytes:
                if t.offset + pos != end or end - start == chunk_bytes or len(segs) == _MAX_SEGMENTS:
                    if segs:
                        chunks.append(Chunk(path, start, end - start, tuple(segs)))
                    start = end = t.offset + pos
                    segs = []
                n = min(chunk_bytes - (end - start), t.nbytes - pos)
                segs.append((k, pos, n))
                pos, end = pos + n, end + n
        if segs:
            chunks.append(Chunk(path, start, end - start, tuple(segs)))
    return chunks


def read_chunk(f: io.FileIO, chunk: Chunk, views: list[memoryview], names: Sequence[str]) -> None:
    """Fill `views` (chunk.nbytes in all) from the file at chunk.offset; a short read names its tensor."""
    done, pending = 0, views
    while pending:
        if hasattr(os, "preadv"):
            n = os.preadv(f.fileno(), pending, chunk.offset + done)
        else:  # Windows: this thread's own handle, so seek + readinto is safe
            f.seek(chunk.offset + done)
            n = f.readinto(pending[0])
        if not n:
            raise InvalidCheckpoint(
                f"{chunk.file}: truncated while reading tensor {_name_at(chunk, done, names)!r}"
            )
        done += n
        while pending and n >= len(pending[0]):
            n -= len(pending[0])
            pending = pending[1:]
        if pending and n:
            pending = [pending[0][n:], *pending[1:]]


def scatter(staging: torch.Tensor, chunk: Chunk, dsts: dict[int, torch.Tensor], non_blocking: bool = False):
    """Copy a chunk read into `staging` out to its tensors' byte ranges (segments lie back to back)."""
    pos = 0
    for k, lo, n in chunk.segments:
        dsts[k][lo : lo + n].copy_(staging[pos : pos + n], non_blocking=non_blocking)
        pos += n


def _name_at(chunk: Chunk, pos: int, names: Sequence[str]) -> str:
    for k, _, n in chunk.segments:
        if pos < n:
            return names[k]
        pos -= n
    return names[chunk.segments[-1][0]]


class HostSink:
    """CPU target: destinations are plain tensors and chunks are read straight into them (one lane for all
    threads: it holds no per-thread state)."""

    def alloc(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8)

    def for_thread(self) -> HostSink:
        return self

    def land(self, f, chunk: Chunk, dsts: dict[int, torch.Tensor], names: Sequence[str]) -> None:
        views = [memoryview(dsts[k].numpy())[lo : lo + n] for k, lo, n in chunk.segments]
        read_chunk(f, chunk, views, names)

    def ready(self, markers: list) -> None:
        pass

    def close(self) -> None:
        pass


class CudaSink:
    """CUDA target: a pinned staging buffer pair and a copy stream per reader thread (see module doc).

    Destinations are allocated on the consumer's stream (`home`) so the caching allocator ties them to the
    stream that later uses and frees them; the copy streams only write into them, and the consumer waits on
    their events first.
    """

    def __init__(self, device: torch.device, staging_bytes: int):
        self.device, self.staging_bytes = device, staging_bytes
        self.home = torch.cuda.current_stream(device)

    def alloc(self, nbytes: int) -> torch.Tensor:
        with torch.cuda.stream(self.home):
            return torch.empty(nbytes, dtype=torch.uint8, device=self.device)

    def for_thread(self) -> _CudaThread:
        return _CudaThread(self)

    def ready(self, markers: list) -> None:
        for event in markers:
            self.home.wait_event(event)

    def close(self) -> None:
        # Freed staging buffers go back to torch's pinned-memory cache; hand them to the OS.
        if hasattr(torch._C, "_accelerator_emptyHostCache"):
            torch._C._accelerator_emptyHostCache()


@dataclass
class _CudaThread:
    owner: CudaSink
    stream: torch.cuda.Stream | None = None
    buffers: list = field(default_factory=lambda: [None, None])
    events: list = field(default_factory=lambda: [None, None])
    turn: int = 0

    def land(self, f, chunk: Chunk, dsts: dict[int, torch.Tensor], names: Sequence[str]) -> torch.cuda.Event:
        if self.stream is None:
            self.stream = torch.cuda.Stream(self.owner.device)
        slot, self.turn = self.turn, self.turn ^ 1
        if self.events[slot] is not None:
            self.events[slot].synchronize()  # the copies out of this buffer are done: refill it
        if self.buffers[slot] is None:
            self.buffers[slot] = torch.empty(self.owner.staging_bytes, dtype=torch.uint8, pin_memory=True)
        staging = self.buffers[slot]
        read_chunk(f, chunk, [memoryview(staging.numpy())[: chunk.nbytes]], names)
        with torch.cuda.stream(self.stream):
            scatter(staging, chunk, dsts, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        self.events[slot] = event
        return event

    def close(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()  # no copy may still read a buffer we drop
        self.buffers = [None, None]


def stream_bytes(
    tensors: Sequence[Stored],
    device: str | torch.device,
    *,
    threads: int | None = None,
    chunk_bytes: int | None = None,
    max_ahead: int | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (index into `tensors`, its bytes as a flat uint8 tensor), each tensor once, in any order.

    The bytes land on `device` when it is a CUDA device, else on the CPU (the caller's `.to(device)` moves
    them on). Closing the generator early stops and joins the reader threads; a reader's error is raised
    here, in the caller's thread. Unset options take the module's constants at call time.
    """
    chunks = plan_chunks(tensors, chunk_bytes or CHUNK_BYTES)
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        staging = max((c.nbytes for c in chunks), default=0)  # a small model pins no more than it reads
        sink = CudaSink(torch.device("cuda", index), staging)
    else:
        sink = HostSink()
    run = _Run(tensors, chunks, sink, MAX_AHEAD if max_ahead is None else max_ahead)
    yield from run.results(threads or THREADS)


class _Run:
    """One streaming pass: the chunk queue the readers share, and the tensors they complete.

    Readers take chunks in file order under one lock; the first chunk of a tensor allocates its destination.
    A reader waits before allocating more while `max_ahead` bytes are allocated and not consumed, but only
    while some fully taken tensor is still to be consumed (its completion is what frees room; waiting
    otherwise could deadlock on a tensor that spans the very chunk that waits).
    """

    def __init__(self, tensors: Sequence[Stored], chunks: list[Chunk], sink, max_ahead: int):
        self.tensors, self.chunks, self.sink, self.max_ahead = tensors, chunks, sink, max_ahead
        self.names = [t.name for t in tensors]
        self.pieces = [0] * len(tensors)  # chunks still to land, per tensor
        self.first, self.last = {}, {}  # tensor -> index of its first / last chunk
        for i, chunk in enumerate(chunks):
            for k, _, _ in chunk.segments:
                self.pieces[k] += 1
                self.first.setdefault(k, i)
                self.last[k] = i
        self.dsts: dict[int, torch.Tensor] = {}
        self.markers: dict[int, list] = {}  # tensor -> CUDA events of its chunks' copies
        self.cond = threading.Condition()
        self.next = 0  # the next chunk to take
        self.ahead = 0  # bytes of allocated destinations not yet consumed
        self.waiting = 0  # fully taken tensors not yet consumed
        self.stop = False
        self.done: queue.SimpleQueue = queue.SimpleQueue()  # completed tensor indices, or an exception

    def results(self, threads: int) -> Iterator[tuple[int, torch.Tensor]]:
        n = min(threads, len(self.chunks))
        workers = [
            threading.Thread(target=self._work, name=f"{THREAD_PREFIX}-{i}", daemon=True) for i in range(n)
        ]
        try:
            for w in workers:
                w.start()
            for k, t in enumerate(self.tensors):
                if t.nbytes == 0:  # no chunk will ever complete it
                    yield k, self.sink.alloc(0)
            for _ in range(len(self.first)):
                yield from self._next_result()
        finally:
            with self.cond:
                self.stop = True
                self.cond.notify_all()
            for w in workers:
                if w.ident is not None:
                    w.join()
            self.sink.close()

    def _next_result(self) -> Iterator[tuple[int, torch.Tensor]]:
        k = self.done.get()
        if isinstance(k, BaseException):
            raise k
        with self.cond:
            dst, markers = self.dsts.pop(k), self.markers.pop(k, [])
        self.sink.ready(markers)
        yield k, dst
        with self.cond:
            self.ahead -= self.tensors[k].nbytes
            self.waiting -= 1
            self.cond.notify_all()

    def _work(self) -> None:
        lane, files = self.sink.for_thread(), {}
        try:
            while (job := self._take()) is not None:
                self._landed(job[0], self._land(lane, files, *job))
        except BaseException as exc:
            self._fail(exc)
        finally:
            for f in files.values():
                f.close()
            try:
                lane.close()
            except BaseException as exc:
                self._fail(exc)

    def _land(self, lane, files: dict[Path, io.FileIO], chunk: Chunk, dsts: dict[int, torch.Tensor]):
        """Read one chunk into place with this thread's own file handles (preadv needs no shared seek)."""
        try:
            if chunk.file not in files:
                files[chunk.file] = open(chunk.file, "rb", buffering=0)  # closed by _work
            return lane.land(files[chunk.file], chunk, dsts, self.names)
        except OSError as exc:
            raise InvalidCheckpoint(f"{chunk.file}: cannot read tensor data ({exc})") from None

    def _take(self) -> tuple[Chunk, dict[int, torch.Tensor]] | None:
        with self.cond:
            while not self.stop and self.next < len(self.chunks):
                i, chunk = self.next, self.chunks[self.next]
                new = [k for k, _, _ in chunk.segments if self.first[k] == i]
                need = sum(self.tensors[k].nbytes for k in new)
                if need and self.ahead and self.ahead + need > self.max_ahead and self.waiting:
                    self.cond.wait()
                    continue
                for k in new:
                    self.dsts[k] = self.sink.alloc(self.tensors[k].nbytes)
                self.ahead += need
                self.waiting += sum(1 for k, _, _ in chunk.segments if self.last[k] == i)
                self.next += 1
                return chunk, {k: self.dsts[k] for k, _, _ in chunk.segments}
            return None

    def _landed(self, chunk: Chunk, marker) -> None:
        with self.cond:
            for k, _, _ in chunk.segments:
                if marker is not None:
                    self.markers.setdefault(k, []).append(marker)
                self.pieces[k] -= 1
                if self.pieces[k] == 0:
                    self.done.put(k)

    def _fail(self, exc: BaseException) -> None:
        with self.cond:
            self.stop = True
            self.cond.notify_all()
        self.done.put(exc)
