"""The resident engine: batching equals single runs, priorities, client caps, cancellation, faults."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from pixdesk.engine.sampling import SamplingParams
from pixdesk.errors import ContextLengthExceeded, Overloaded, TooManyImages

from .helpers import Run, assert_same_run, engine, image, reference, user

LP = {"logprobs": True, "top_logprobs": 2}


def _mixed_prompts(eng, n=8):
    prompts = []
    for i in range(n):
        parts = [image(2 + i % 3, 3 + i % 2, i)] if i % 2 else []
        prompts.append(eng.encode_chat([user(*parts, "question number " + "x " * (3 * i))]))
    return prompts


def test_batched_equals_single(tiny):
    with engine(tiny, max_batch=8) as eng:
        prompts = _mixed_prompts(eng)
        params = [SamplingParams(max_tokens=8 + 3 * i, **LP) for i in range(len(prompts))]
        runs = [Run(eng.submit(p, q)) for p, q in zip(prompts, params)]
        for r in runs:
            r.wait()
        stats = eng.stats()
    assert max(stats["seqs_per_decode_step"]) > 1
    for r, p, q in zip(runs, prompts, params):
        assert r.finish.reason == "length"
        assert_same_run(r.tokens, r.logprobs, *reference(tiny, p, q))


def test_request_arriving_mid_decode_is_served_before_the_other_finishes(tiny):
    with engine(tiny, max_batch=4) as eng:
        long_run = Run(
            eng.submit(eng.encode_chat([user("long answer please")]), SamplingParams(max_tokens=400))
        )
        assert long_run.first_token.wait(60)
        late = Run(eng.submit(eng.encode_chat([user("short")]), SamplingParams(max_tokens=3)))
        late.wait()
        assert long_run.finish is None  # the long one is still decoding
        long_run.wait()
        assert eng.stats()["seqs_per_decode_step"].get(2, 0) > 0


def test_interactive_first_behind_50_batch_requests(tiny):
    with engine(tiny, max_batch=4, reserved_interactive=1, max_queue=100, prefill_chunk=32) as eng:
        log = []
        eng.scheduler.stage_hook = lambda stage, seq: log.append((stage, seq.priority, len(seq.generated)))
        batch_prompt = eng.encode_chat([user("receipt " * 20)])
        batch = [
            Run(eng.submit(batch_prompt, SamplingParams(max_tokens=30), priority="batch")) for _ in range(50)
        ]
        assert batch[0].first_token.wait(60)
        mark = len(log)
        inter = Run(eng.submit(eng.encode_chat([user("what is this error?")]), SamplingParams(max_tokens=4)))
        inter.wait()
        after = log[mark:]
        first = next(i for i, e in enumerate(after) if e == ("sample", "interactive", 0))
        other_prefills = [e for e in after[:first] if e[0] == "prefill" and e[1] == "batch"]
        assert len(other_prefills) <= 1  # within one prefill of the running work
        for r in batch:
            r.sub.cancel()
        for r in batch:
            r.wait()


def test_per_client_cap(tiny):
    with engine(tiny, max_batch=4, per_client_active=1) as eng:
        seen = []
        eng.scheduler.stage_hook = lambda stage, seq: seen.append(
            sum(1 for s in eng.scheduler.active if s.client_id == "editor")
        )
        prompts = [eng.encode_chat([user(f"q{i}")]) for i in range(3)]
        runs = [Run(eng.submit(p, SamplingParams(max_tokens=5), client_id="editor")) for p in prompts]
        for r in runs:
            r.wait()
    assert max(seen) == 1


def test_cancel_mid_generation_frees_slot_and_cache_refs(tiny):
    with engine(tiny, max_batch=2) as eng:
        shared = "system " * 40
        warm = Run(eng.submit(eng.encode_chat([user(shared + "a")]), SamplingParams(max_tokens=2))).wait()
        assert warm.finish.reason == "length"
        run = Run(eng.submit(eng.encode_chat([user(shared + "b")]), SamplingParams(max_tokens=500)))
        assert run.first_token.wait(60)
        assert eng.stats()["prefix_cache"]["pinned_blocks"] > 0
        run.sub.cancel()
        run.wait()
        assert run.finish.reason == "cancelled"
        stats = eng.stats()
        assert stats["free_slots"] == 2 and stats["active"] == 0
        assert stats["prefix_cache"]["pinned_blocks"] == 0
        assert (
            Run(eng.submit(eng.encode_chat([user("next")]), SamplingParams(max_tokens=3)))
            .wait()
            .finish.reason
        )


class FakePanic(BaseException):
    """Like pyo3's PanicException: a BaseException, not an Exception."""


@pytest.mark.parametrize("stage", ["admit", "prefill", "decode", "sample"])
def test_failure_in_one_request_leaves_others_unchanged(tiny, stage):
    with engine(tiny, max_batch=4) as eng:
        prompts = _mixed_prompts(eng, 4)
        params = SamplingParams(max_tokens=10, **LP)
        victim = {}

        def hook(s, seq):
            if s == stage and seq.id == victim.get("id") and (stage != "sample" or len(seq.generated) == 3):
                raise FakePanic("boom")

        eng.scheduler.stage_hook = hook
        subs = []
        for i, p in enumerate(prompts):
            sub = eng.submit(p, params)
            if i == 1:
                victim["id"] = sub.id
            subs.append(Run(sub))
        for r in subs:
            r.wait()
        assert subs[1].finish.reason == "error" and subs[1].finish.error.code == "internal_error"
        for i, (r, p) in enumerate(zip(subs, prompts)):
            if i != 1:
                assert r.finish.reason == "length"
                assert_same_run(r.tokens, r.logprobs, *reference(tiny, p, params))
        assert eng.stats()["free_slots"] == 4
        assert eng.scheduler.thread.is_alive()


def test_limits_are_checked_before_queueing(tiny):
    with engine(tiny, max_batch=1, max_queue=2, max_context=64) as eng:
        with pytest.raises(ContextLengthExceeded):
            eng.submit(eng.encode_chat([user("hi")]), SamplingParams(max_tokens=100))
        with pytest.raises(TooManyImages):
            eng.encode_chat([user(*[image(1, 1, i) for i in range(13)], "many")])
        gate = threading.Event()
        # Block in prefill (outside the scheduler lock), so submit() keeps working meanwhile.
        eng.scheduler.stage_hook = lambda stage, seq: gate.wait(30) if stage == "prefill" else None
        p = eng.encode_chat([user("hi")])
        runs = [Run(eng.submit(p, SamplingParams(max_tokens=2)))]
        time.sleep(0.2)  # the first is admitted and blocked in the hook; the next two wait in the queue
        runs += [Run(eng.submit(p, SamplingParams(max_tokens=2))) for _ in range(2)]
        with pytest.raises(Overloaded) as exc:
            eng.submit(p, SamplingParams(max_tokens=2))
        assert exc.value.retry_after >= 1 and exc.value.http_status == 429
        gate.set()
        for r in runs:
            assert r.wait().finish.reason == "length"


def test_out_of_memory_fails_the_request_with_the_settings_to_change(tiny):
    with engine(tiny, max_batch=2) as eng:
        armed = {"once": True}  # the first prefill after this point fails, as a CUDA OOM would

        def hook(stage, seq):
            if stage == "prefill" and armed.pop("once", False):
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

        eng.scheduler.stage_hook = hook
        run = Run(eng.submit(eng.encode_chat([user("big")]), SamplingParams(max_tokens=3))).wait()
        assert run.finish.reason == "error" and "images.max_patches" in run.finish.error.message
        assert "simulated" not in run.finish.error.message
        ok = Run(eng.submit(eng.encode_chat([user("small")]), SamplingParams(max_tokens=3))).wait()
        assert ok.finish.reason == "length"


def test_a_single_slot_engine_still_runs_batch_requests(tiny):
    with engine(tiny, max_batch=1, reserved_interactive=1) as eng:
        prompt = eng.encode_chat([user("folder job")])
        run = Run(eng.submit(prompt, SamplingParams(max_tokens=2), priority="batch"))
        assert run.wait(60).finish.reason == "length"


def test_greedy_with_logit_bias_in_a_batch_equals_one_by_one(tiny):
    """Biased greedy rows are picked in the batch (one transfer per step) exactly as alone."""
    from pixdesk.engine.backend import LocalEngine
    from pixdesk.engine.events import Delta
    from pixdesk.engine.sampling import SamplingParams
    from pixdesk.engine.scheduler_config import SchedulerConfig
    from pixdesk.tokenizer.chat import EncodedPrompt

    prompts = [EncodedPrompt([1, *range(1000 + 7 * i, 1040 + 7 * i)], []) for i in range(3)]
    params = [SamplingParams(max_tokens=12, logit_bias={1500 + i: 3.0, 2: -100.0}) for i in range(3)]

    def tokens(sub):
        return [t for ev in sub if isinstance(ev, Delta) for t in ev.token_ids]

    with LocalEngine(tiny, SchedulerConfig(max_batch=1, max_context=256)) as eng:
        alone = [tokens(eng.submit(p, sp)) for p, sp in zip(prompts, params)]
    with LocalEngine(tiny, SchedulerConfig(max_batch=3, max_context=256, per_client_active=3)) as eng:
        subs = [eng.submit(p, sp) for p, sp in zip(prompts, params)]
        together = [tokens(s) for s in subs]
        assert eng.scheduler.stats.max_seqs_per_step > 1
    assert together == alone and all(len(t) == 12 for t in alone)
    # and the same as the reference driver, which biases and picks one sequence at a time
    from pixdesk.engine.generate import generate

    events = generate(tiny.model, tiny.tokenizer, prompts[0], params[0])
    assert [t for ev in events for t in getattr(ev, "token_ids", [])] == alone[0]


def test_a_lone_prompt_prefills_in_long_chunks_and_a_joining_one_in_short(tiny):
    """With nothing decoding, each chunk is `solo_prefill_chunk` long (fewer weight reads to the first
    token); while another sequence decodes, `prefill_chunk` keeps its steps coming."""
    with engine(tiny, max_batch=4, prefill_chunk=16, solo_prefill_chunk=64) as eng:
        starts: dict[int, list[int]] = {}  # id(sequence) -> the position each of its chunks starts at
        eng.scheduler.stage_hook = lambda stage, seq: (
            starts.setdefault(id(seq), [seq.start]).append(seq.prefilled) if stage == "prefill" else None
        )

        def chunks(prompt) -> list[int]:
            [seq] = [v for v in starts.values() if v][-1:]
            edges = sorted(set(seq[1:])) + [len(prompt.ids)]
            return [b - a for a, b in zip(edges, edges[1:])]

        lone = eng.encode_chat([user("tell me " * 30)])
        first = Run(eng.submit(lone, SamplingParams(max_tokens=300)))
        assert first.first_token.wait(60)
        assert chunks(lone)[:-1] == [64] * (len(chunks(lone)) - 1) and len(chunks(lone)) >= 2
        joining = eng.encode_chat([user("and this " * 30)])
        second = Run(eng.submit(joining, SamplingParams(max_tokens=2)))
        second.wait()
        assert first.finish is None  # still decoding: the second prefilled beside it
        assert chunks(joining)[:-1] == [16] * (len(chunks(joining)) - 1) and len(chunks(joining)) >= 4
        first.sub.cancel()
        first.wait()
