"""The threaded chunk streamer: chunk plans, bit-exact bytes against the single-thread reader, dtype
conversion, errors raised in the caller, reader threads stopped on close, bounded look-ahead, progress."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch

from pixdesk.errors import InvalidCheckpoint
from pixdesk.model.pixtral import Pixtral
from pixdesk.weights import stream
from pixdesk.weights.load import (
    TensorInfo,
    build_model,
    find_checkpoint,
    iter_planned,
    iter_tensors,
    plan_tensors,
    read_args,
)
from pixdesk.weights.stream import HostSink, plan_chunks, read_chunk, scatter, stream_bytes
from pixdesk.weights.tiny import TINY_ARGS, write_checkpoint

ODD_CHUNK = 777  # not a multiple of any element size: pieces end mid-element and cross tensors


def _plan(model_dir):
    files = find_checkpoint(model_dir)
    args = read_args(files)
    with torch.device("meta"):
        model = Pixtral(args)
    return plan_tensors(files, model, args)


def _live_readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(stream.THREAD_PREFIX)]


def _fake(tmp_path: Path, sizes: list[int], gap_after: int | None = None) -> list[TensorInfo]:
    """Tensors of random bytes back to back in one file (with a gap after one of them, if asked)."""
    path, offset, infos, data = tmp_path / "blob.bin", 8, [], bytearray(8)
    for k, n in enumerate(sizes):
        infos.append(TensorInfo(path, f"t{k}", (n,), "U8", n, offset))
        data += os.urandom(n)
        offset += n
        if k == gap_after:
            data += b"\0" * 13
            offset += 13
    path.write_bytes(bytes(data))
    return infos


# ------------------------------------------------------------------------------------------ chunk plans


def test_chunks_cover_every_byte_once_and_stay_contiguous(tmp_path):
    infos = _fake(tmp_path, [5, 300, 1, 64, 1000, 7, 0, 33], gap_after=3)
    chunks = plan_chunks(infos, 100)
    assert all(0 < c.nbytes <= 100 for c in chunks)
    covered = {k: [] for k in range(len(infos))}
    for c in chunks:
        pos = c.offset
        for k, lo, n in c.segments:
            assert infos[k].offset + lo == pos  # a chunk is one contiguous run of file bytes
            covered[k].append((lo, n))
            pos += n
        assert pos - c.offset == c.nbytes
    for k, pieces in covered.items():
        assert sum(n for _, n in pieces) == infos[k].nbytes
        assert [lo for lo, _ in pieces] == sorted(lo for lo, _ in pieces)
    # Small neighbours share a chunk; the 1000-byte tensor spans many; the gap starts a new chunk.
    assert [k for k, _, _ in chunks[0].segments] == [0, 1]
    assert sum(1 for c in chunks if any(k == 4 for k, _, _ in c.segments)) >= 10
    gap_start = infos[3].offset + infos[3].nbytes
    assert not any(c.offset < gap_start < c.offset + c.nbytes for c in chunks)
    assert any(c.offset == infos[4].offset for c in chunks)


def test_files_never_share_a_chunk(tmp_path, state):
    d = write_checkpoint(tmp_path / "hf", TINY_ARGS, state, layout="hf", shards=3)
    infos = [p.info for p in _plan(d)]
    chunks = plan_chunks(infos, 4096)
    assert len({c.file for c in chunks}) == 3
    assert all(infos[k].file == c.file for c in chunks for k, _, _ in c.segments)


def test_staged_copy_puts_every_segment_in_place(tmp_path):
    """The CUDA lane's step (read a chunk into a staging buffer, scatter it) on CPU tensors."""
    infos = _fake(tmp_path, [10, 250, 3, 90])
    dsts = {k: torch.zeros(i.nbytes, dtype=torch.uint8) for k, i in enumerate(infos)}
    staging = torch.empty(64, dtype=torch.uint8)
    names = [i.name for i in infos]
    with open(infos[0].file, "rb", buffering=0) as f:
        for chunk in plan_chunks(infos, 64):
            read_chunk(f, chunk, [memoryview(staging.numpy())[: chunk.nbytes]], names)
            scatter(staging, chunk, dsts)
    raw = infos[0].file.read_bytes()
    for k, i in enumerate(infos):
        assert dsts[k].numpy().tobytes() == raw[i.offset : i.offset + i.nbytes]


# ------------------------------------------------------------------------------------ bytes and values


@pytest.mark.parametrize("layout, shards", [("native", 1), ("hf", 1), ("hf", 3)])
@pytest.mark.parametrize("threads", [1, 3])
def test_bit_exact_against_the_single_thread_reader(tmp_path, state, layout, shards, threads):
    d = write_checkpoint(tmp_path / layout, TINY_ARGS, state, layout=layout, shards=shards)
    plan = _plan(d)
    want = {p.target: t for p, t in iter_tensors(plan)}
    got = {p.target: t for p, t in iter_planned(plan, "cpu", threads=threads, chunk_bytes=ODD_CHUNK)}
    assert got.keys() == want.keys() == state.keys()
    for name, t in want.items():
        assert got[name].dtype == t.dtype and got[name].shape == t.shape
        assert torch.equal(got[name].view(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)), name
        assert torch.equal(got[name], state[name]), name  # HF q/k rows permuted back


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_build_model_converts_to_the_requested_dtype(native, state, dtype, monkeypatch):
    monkeypatch.setattr(stream, "CHUNK_BYTES", ODD_CHUNK)
    model = build_model(find_checkpoint(native), dtype=dtype)
    for name, p in model.named_parameters():
        assert p.dtype == dtype and torch.equal(p, state[name].to(dtype)), name


def test_progress_reaches_the_total_once_per_tensor(native, monkeypatch):
    monkeypatch.setattr(stream, "CHUNK_BYTES", ODD_CHUNK)
    seen = []
    model = build_model(find_checkpoint(native), progress=lambda d, t: seen.append((d, t)))
    assert len(seen) == len(list(model.parameters()))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert seen[-1][0] == seen[-1][1] == sum(p.numel() * p.element_size() for p in model.parameters())


def test_empty_tensors_are_yielded(tmp_path):
    infos = _fake(tmp_path, [0, 40, 0])
    got = dict(stream_bytes(infos, "cpu", chunk_bytes=16))
    assert sorted(got) == [0, 1, 2] and got[0].numel() == got[2].numel() == 0 and got[1].numel() == 40


# --------------------------------------------------------------------------------------------- errors


def test_file_truncated_after_the_header_names_the_tensor(native):
    plan = _plan(native)
    path = native / "consolidated.safetensors"
    cut = path.stat().st_size - 1000
    os.truncate(path, cut)
    cut_off = {
        p.info.name for p in plan if p.info.offset + p.info.nbytes > cut
    }  # whichever reader fails first
    with pytest.raises(InvalidCheckpoint) as exc:
        for _ in iter_planned(plan, "cpu", threads=3, chunk_bytes=ODD_CHUNK):
            pass
    assert exc.value.message in {f"{path}: truncated while reading tensor {n!r}" for n in cut_off}
    assert _live_readers() == []


def test_unreadable_file_is_an_invalid_checkpoint(native):
    plan = _plan(native)
    (native / "consolidated.safetensors").unlink()
    with pytest.raises(InvalidCheckpoint, match="consolidated.safetensors: cannot read tensor data"):
        list(iter_planned(plan, "cpu", threads=2))
    assert _live_readers() == []


@pytest.mark.parametrize("max_ahead", [None, 1])
def test_closing_early_stops_the_readers(native, max_ahead):
    gen = iter_planned(_plan(native), "cpu", threads=4, chunk_bytes=64, max_ahead=max_ahead)
    next(gen)
    if max_ahead == 1:
        assert _live_readers()  # waiting for the consumer to take more
    gen.close()
    assert _live_readers() == []


def test_an_error_in_the_callers_loop_stops_the_readers(native, monkeypatch):
    """Stopped when the error leaves build_model, not when the generator is collected: the traceback (held
    here) keeps build_model's frame, and so the generator, alive."""
    monkeypatch.setattr(stream, "CHUNK_BYTES", 64)
    monkeypatch.setattr(stream, "MAX_AHEAD", 1)  # readers wait for the consumer: alive unless stopped

    def progress(done, total):
        raise RuntimeError("the caller gave up")

    try:
        build_model(find_checkpoint(native), progress=progress)
    except RuntimeError as exc:
        assert exc.__traceback__ is not None and _live_readers() == []
    else:
        pytest.fail("the progress callback's error was swallowed")


def test_readers_stay_a_bounded_distance_ahead(tmp_path, monkeypatch):
    """With max_ahead = one tensor and a slow consumer, allocated-but-unconsumed bytes stay within two
    tensors (the one being consumed, and one spanning the chunk that starts the next)."""
    infos = _fake(tmp_path, [1000] * 12)
    outstanding, peak = [0], [0]
    lock = threading.Lock()
    real_alloc = HostSink.alloc

    def alloc(self, nbytes):
        with lock:
            outstanding[0] += nbytes
            peak[0] = max(peak[0], outstanding[0])
        return real_alloc(self, nbytes)

    monkeypatch.setattr(HostSink, "alloc", alloc)
    got = {}
    for k, t in stream_bytes(infos, "cpu", threads=4, chunk_bytes=300, max_ahead=1000):
        got[k] = t
        with lock:
            outstanding[0] -= t.numel()
        time.sleep(0.005)
    assert sorted(got) == list(range(12)) and peak[0] <= 2000
    raw = infos[0].file.read_bytes()
    assert all(got[k].numpy().tobytes() == raw[i.offset : i.offset + i.nbytes] for k, i in enumerate(infos))


# ------------------------------------------------------------------------------------------ CUDA target

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("layout", ["native", "hf"])
def test_cuda_target_lands_the_same_bytes(tmp_path, state, layout):
    d = write_checkpoint(
        tmp_path / layout, TINY_ARGS, state, layout=layout, shards=2 if layout == "hf" else 1
    )
    plan = _plan(d)
    want = {p.target: t for p, t in iter_tensors(plan)}
    got = {p.target: t for p, t in iter_planned(plan, "cuda", threads=3, chunk_bytes=ODD_CHUNK)}
    assert got.keys() == want.keys()
    assert all(got[n].is_cuda and torch.equal(got[n].cpu(), t) for n, t in want.items())
    model = build_model(find_checkpoint(d), device="cuda", dtype=torch.bfloat16)
    for name, p in model.named_parameters():
        assert p.is_cuda and torch.equal(p.cpu(), state[name].to(torch.bfloat16)), name
    gen = iter_planned(plan, "cuda", threads=4, chunk_bytes=64, max_ahead=1)
    next(gen)
    gen.close()
    assert _live_readers() == []


@pytest.mark.gpu
@cuda
def test_cuda_quantize_and_cache_hit_agree(tmp_path, monkeypatch):
    from pixdesk.weights.checkpoint import load_checkpoint
    from pixdesk.weights.tiny import make_tiny_checkpoint

    monkeypatch.setattr(stream, "CHUNK_BYTES", ODD_CHUNK)
    d = make_tiny_checkpoint(tmp_path / "model", layout="hf", seed=1)
    first = load_checkpoint(d, quant="int8", quant_cache=tmp_path / "qc", device="cuda", dtype=torch.bfloat16)
    second = load_checkpoint(
        d, quant="int8", quant_cache=tmp_path / "qc", device="cuda", dtype=torch.bfloat16
    )
    assert (first.quant["source"], second.quant["source"]) == ("quantized", "cache")
    a = {**dict(first.model.named_parameters()), **dict(first.model.named_buffers())}
    b = {**dict(second.model.named_parameters()), **dict(second.model.named_buffers())}
    assert a.keys() == b.keys() and all(b[k].is_cuda and torch.equal(a[k], b[k]) for k in a)
