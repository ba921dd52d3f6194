"""Pipelined greedy decode (step n+1 launched before step n's picks are read) equals the plain loop.

Each schedule is driven here one worker-loop turn at a time (`Scheduler.run_once`, no thread), so the
pipelined and the plain engine see requests and cancellations at the same turn and can be compared event
for event, counter for counter.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from pixdesk.engine.backend import LocalEngine
from pixdesk.engine.events import Delta, Finish
from pixdesk.engine.sampling import SamplingParams
from pixdesk.engine.scheduler_config import SchedulerConfig
from pixdesk.tokenizer.chat import EncodedPrompt

CFG = {"max_batch": 4, "max_context": 128, "prefix_block": 4, "static_decode": True, "compile": False}
COUNTERS = ("generated_tokens", "decode_steps", "seqs_per_step", "finished", "prefill_chunks")


def prompt(i: int, n: int = 20) -> EncodedPrompt:
    return EncodedPrompt([1, *range(1000 + 7 * i, 1000 + 7 * i + n)], [])


def submit(p: EncodedPrompt, params: SamplingParams):
    return lambda eng, subs: subs.append(eng.submit(p, params))


def cancel(i: int, seen: list | None = None):
    def act(eng, subs):
        if seen is not None:
            seen.append(eng.scheduler._inflight is not None)
        subs[i].cancel()

    return act


def drive(eng: LocalEngine, script: dict) -> list:
    """Run `script` ({turn: [action(engine, submissions)]}) until no work is left; the submissions."""
    subs, turn = [], 0
    while turn <= max(script) or eng.scheduler._has_work():
        for act in script.get(turn, []):
            act(eng, subs)
        eng.scheduler.run_once()
        turn += 1
    return subs


def play(tiny, pipeline: bool, script: dict, hook=None, **cfg):
    """`script` on a fresh engine: each request's events, and the engine's stats."""
    eng = LocalEngine(tiny, SchedulerConfig(**{**CFG, **cfg, "pipeline_decode": pipeline}))
    eng.scheduler.stage_hook = hook
    return [[comparable(ev) for ev in s] for s in drive(eng, script)], eng.scheduler.stats


def comparable(ev):
    """Errors compare by code and message (exceptions compare by identity)."""
    if isinstance(ev, Finish) and ev.error is not None:
        return replace(ev, error=(ev.error.code, ev.error.message))
    return ev


def counters(stats) -> dict:
    return {k: getattr(stats, k) for k in COUNTERS}


def tokens(events) -> list[int]:
    return [t for ev in events if isinstance(ev, Delta) for t in ev.token_ids]


def logger(log: list):
    """A stage hook noting the stage, the request (its prompt's first id after BOS), its tokens so far."""
    return lambda stage, seq: log.append((stage, seq.prompt.ids[1], len(seq.generated)))


def assert_same(tiny, script: dict, *, same_steps: bool = True, hook_log: bool = False, **cfg):
    """The pipelined run equals the plain one: events, counters, and (hook_log) the stage hooks' calls."""
    runs = {}
    for pipeline in (False, True):
        log: list = []
        events, stats = play(tiny, pipeline, script, logger(log) if hook_log else None, **cfg)
        runs[pipeline] = events, stats, log
    (plain, plain_stats, plain_log), (piped, piped_stats, piped_log) = runs[False], runs[True]
    assert piped == plain
    assert plain_stats.pipelined_steps == 0 and piped_stats.pipelined_steps > 0
    if same_steps:
        assert counters(piped_stats) == counters(plain_stats)
    else:  # a prefill collects the step in flight first: the same tokens, in more (smaller) steps
        rows = [sum(b * n for b, n in s.seqs_per_step.items()) for s in (plain_stats, piped_stats)]
        assert rows[0] == rows[1] and piped_stats.generated_tokens == plain_stats.generated_tokens
    assert piped_log == plain_log
    return plain, piped_stats


def stop_string(tiny, p: EncodedPrompt) -> str:
    """Text the plain run of `p` emits mid-answer and not before: a stop string that ends it there."""
    (events,), _ = play(tiny, False, {0: [submit(p, SamplingParams(max_tokens=40))]})
    pieces = [ev.text for ev in events if isinstance(ev, Delta)]
    for i in range(8, len(pieces)):
        piece = pieces[i].strip()
        if piece.isascii() and piece.isalnum() and piece not in "".join(pieces[:i]):
            return piece
    raise AssertionError("no usable stop string in the tiny model's answer")


def test_concurrent_sequences_of_different_lengths_with_bias_and_stop(tiny):
    stop = stop_string(tiny, prompt(2, 30))
    params = [
        SamplingParams(max_tokens=12),
        SamplingParams(max_tokens=30, logit_bias={1500: 4.0, 1326: -100.0}),
        SamplingParams(max_tokens=40, stop=(stop,)),
        SamplingParams(max_tokens=7, logit_bias={2: -100.0}),
    ]
    prompts = [prompt(0), prompt(1, 9), prompt(2, 30), prompt(3, 50)]
    plain, _ = assert_same(tiny, {0: [submit(p, q) for p, q in zip(prompts, params)]}, hook_log=True)
    finishes = [events[-1] for events in plain]
    assert [f.reason for f in finishes] == ["length", "length", "stop", "length"]
    assert len(tokens(plain[2])) < 40  # the stop string ended it mid-run, while the others decoded
    assert [f.usage.completion_tokens for f in finishes] == [12, 30, len(tokens(plain[2])), 7]


def test_biased_greedy_rows_alone_equal_the_batch(tiny):
    params = [SamplingParams(max_tokens=15, logit_bias={1500 + i: 3.0, 2: -100.0}) for i in range(3)]
    script = {0: [submit(prompt(i), q) for i, q in enumerate(params)]}
    plain, _ = assert_same(tiny, script)
    alone = [tokens(play(tiny, True, {0: [submit(prompt(i), q)]})[0][0]) for i, q in enumerate(params)]
    assert [tokens(e) for e in plain] == alone


def test_a_full_context_never_steps_past_the_cache(tiny):
    """prompt + max_tokens == max_context: the last step feeds position max_len - 2, none goes further."""
    script = {0: [submit(prompt(0), SamplingParams(max_tokens=64 - 21)),
                  submit(prompt(1, 5), SamplingParams(max_tokens=20))]}  # fmt: skip
    plain, _ = assert_same(tiny, script, max_context=64)
    assert [events[-1].reason for events in plain] == ["length", "length"]
    eng = LocalEngine(tiny, SchedulerConfig(**{**CFG, "max_context": 64}))
    launch, fed = eng.scheduler.decoder.launch, []
    eng.scheduler.decoder.launch = lambda s, t, p, *a, **k: (
        fed.append(int(p.max())),
        launch(s, t, p, *a, **k),
    )[1]
    drive(eng, script)
    assert max(fed) == 64 - 2 and eng.scheduler.stats.pipelined_steps > 0


def test_cancellation_while_a_step_is_in_flight(tiny):
    seen: list = []
    script = {
        0: [
            submit(prompt(0), SamplingParams(max_tokens=40)),
            submit(prompt(1), SamplingParams(max_tokens=30)),
        ],
        12: [cancel(0, seen)],
    }
    plain, _ = assert_same(tiny, script, hook_log=True)
    assert plain[0][-1].reason == "cancelled" and plain[1][-1].reason == "length"
    assert seen == [False, True]  # plain, then pipelined: the cancelled one had a row in flight


def test_request_admitted_while_another_decodes(tiny):
    script = {
        0: [submit(prompt(0), SamplingParams(max_tokens=30))],
        8: [submit(prompt(1, 40), SamplingParams(max_tokens=10, logit_bias={7: 2.0}))],
    }
    plain, stats = assert_same(tiny, script, same_steps=False, prefill_chunk=16)
    assert [events[-1].reason for events in plain] == ["length", "length"]
    assert stats.max_seqs_per_step == 2


@pytest.mark.parametrize("ending", ["stop", "cancel"])
def test_prefix_cache_entry_of_a_sequence_ended_mid_pipeline(tiny, ending):
    """The first request ends while a step for it is in flight; a follow-up reusing its KV (prompt and
    answer) answers exactly like a cold engine."""
    p = prompt(2, 30)
    if ending == "stop":
        first = {0: [submit(p, SamplingParams(max_tokens=40, stop=(stop_string(tiny, p),)))]}
    else:
        first = {0: [submit(p, SamplingParams(max_tokens=40))], 15: [cancel(0)]}
    eng = LocalEngine(tiny, SchedulerConfig(**CFG))
    subs = drive(eng, first)
    answer = tokens(list(subs[0]))
    assert subs[0].finish.reason == ("stop" if ending == "stop" else "cancelled") and len(answer) < 40
    assert eng.scheduler._inflight is not None  # its last step was still in flight when it ended
    follow = EncodedPrompt([*p.ids, *answer, *range(1200, 1209)], [])
    params = SamplingParams(max_tokens=12)
    (warm,) = drive(eng, {0: [submit(follow, params)]})
    warm_events = list(warm)
    cached = warm_events[-1].usage.cached_tokens
    assert cached > len(p.ids)  # the cache held part of the answer's KV too
    (cold_events,), _ = play(tiny, True, {0: [submit(follow, params)]}, prefix_cache_bytes=0)
    assert tokens(warm_events) == tokens(cold_events) and len(tokens(cold_events)) == 12


class Boom(BaseException):
    pass


@pytest.mark.parametrize("stage", ["decode", "sample"])
def test_a_failure_ends_its_request_alone_and_the_same_way(tiny, stage):
    def hook(s, seq):
        if s == stage and seq.params.max_tokens == 25 and len(seq.generated) == 5:
            raise Boom("injected")

    script = {0: [submit(prompt(i), SamplingParams(max_tokens=20 + 5 * i)) for i in range(3)]}
    runs = [play(tiny, pipeline, script, hook) for pipeline in (False, True)]
    (plain, plain_stats), (piped, piped_stats) = runs
    assert piped == plain and counters(piped_stats) == counters(plain_stats)
    assert piped_stats.pipelined_steps > 0
    assert [events[-1].reason for events in piped] == ["length", "error", "length"]
    assert piped[1][-1].error[0] == "internal_error"
    clean, _ = play(tiny, True, script)
    assert piped[0] == clean[0] and piped[2] == clean[2]


def test_rows_that_need_the_host_are_not_pipelined(tiny):
    """Logprobs, sampling and penalties take the plain path, and equal it."""
    for params in (
        SamplingParams(max_tokens=10, logprobs=True, top_logprobs=2),
        SamplingParams(max_tokens=10, temperature=0.8, seed=3),
        SamplingParams(max_tokens=10, frequency_penalty=0.5),
    ):
        script = {0: [submit(prompt(0), params), submit(prompt(1), SamplingParams(max_tokens=10))]}
        runs = [play(tiny, pipeline, script) for pipeline in (False, True)]
        assert runs[1][0] == runs[0][0] and runs[1][1].pipelined_steps == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the device path needs CUDA")
@pytest.mark.parametrize("compile", [False, True])
def test_on_the_gpu_pipelined_equals_plain(tiny_dir, compile):
    """CUDA: picks written into the graph's input buffer by a device op; waits cover one step only."""
    from pixdesk.weights.checkpoint import load_checkpoint

    gpu = load_checkpoint(tiny_dir, device="cuda")
    stop = stop_string(gpu, prompt(2, 30))
    params = [SamplingParams(max_tokens=60), SamplingParams(max_tokens=50, logit_bias={1500: 4.0}),
              SamplingParams(max_tokens=40, stop=(stop,))]  # fmt: skip
    script = {0: [submit(prompt(i, 10 * i + 5), q) for i, q in enumerate(params)], 20: [cancel(0)]}
    assert_same(gpu, script, compile=compile)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the device path needs CUDA")
def test_on_the_gpu_buckets_captured_mid_pipeline_equal_plain(tiny_dir):
    """A new attention bucket's graph captured between pipelined steps (its warm-up runs repeat a step fed
    from the picks) decodes as the plain loop does."""
    from pixdesk.weights.checkpoint import load_checkpoint

    gpu = load_checkpoint(tiny_dir, device="cuda")
    script = {0: [submit(prompt(0, 10), SamplingParams(max_tokens=60))]}
    runs = []
    for pipeline in (False, True):
        eng = LocalEngine(gpu, SchedulerConfig(**{**CFG, "compile": True, "pipeline_decode": pipeline}))
        eng.scheduler.decoder.bucket_size = 16  # a new graph every 16 positions
        runs.append(([[comparable(ev) for ev in s] for s in drive(eng, script)], eng.scheduler.stats))
    assert runs[1][0] == runs[0][0] and runs[1][1].pipelined_steps > 0
    assert len(eng.scheduler.decoder.graphs) >= 4
