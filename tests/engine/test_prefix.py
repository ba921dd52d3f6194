"""Prefix cache: which requests hit (v3 prompt format), content-keyed images, eviction, on/off agreement."""

from __future__ import annotations

import pytest

from pixdesk.engine.prefix import PrefixCache, chain_keys, token_keys
from pixdesk.engine.sampling import SamplingParams
from pixdesk.tokenizer.chat import ChatMessage

from .helpers import Run, assert_same_run, engine, image, reference, user

LP = {"logprobs": True, "top_logprobs": 2}
SYSTEM = ChatMessage("system", "You are a careful assistant for screenshots and code. " * 25)


def _delta(eng, prompt, params):
    """Run one request; return (run, prefilled tokens, vision calls) it cost by the engine's counters."""
    before = eng.stats()
    run = Run(eng.submit(prompt, params)).wait()
    after = eng.stats()
    return (
        run,
        after["prefilled_tokens"] - before["prefilled_tokens"],
        after["vision_calls"] - before["vision_calls"],
    )


def test_case1_same_system_prompt_different_image(tiny):
    with engine(tiny) as eng:
        _delta(
            eng,
            eng.encode_chat([SYSTEM, user(image(2, 2, 1), "What is this?")]),
            SamplingParams(max_tokens=3),
        )
        prompt = eng.encode_chat([SYSTEM, user(image(2, 2, 2), "What is this?")])
        run, prefilled, vision = _delta(eng, prompt, SamplingParams(max_tokens=3, **LP))
    assert prefilled <= 0.10 * len(prompt.ids), (prefilled, len(prompt.ids))
    assert vision == 1  # a new image is encoded
    assert run.finish.usage.cached_tokens == len(prompt.ids) - prefilled
    assert_same_run(run.tokens, run.logprobs, *reference(tiny, prompt, SamplingParams(max_tokens=3, **LP)))


def test_case2_same_system_prompt_same_image_new_question(tiny):
    img = image(6, 8, 3)
    with engine(tiny) as eng:
        _delta(eng, eng.encode_chat([SYSTEM, user(img, "Describe it.")]), SamplingParams(max_tokens=3))
        prompt = eng.encode_chat([SYSTEM, user(img, "What colour is the button?")])
        run, prefilled, vision = _delta(eng, prompt, SamplingParams(max_tokens=3, **LP))
    assert prefilled <= 0.10 * len(prompt.ids)
    assert vision == 0  # the image lies inside the reused prefix: no encoder call at all
    assert_same_run(run.tokens, run.logprobs, *reference(tiny, prompt, SamplingParams(max_tokens=3, **LP)))


def test_case3_multi_turn_reuses_the_previous_answer(tiny):
    with engine(tiny) as eng:
        turn1 = [user(image(10, 12, 5), "Explain this error message in detail.")]
        first, _, _ = _delta(eng, eng.encode_chat(turn1), SamplingParams(max_tokens=150))
        answer = tiny.tokenizer.decode(first.tokens)
        turn2 = [*turn1, ChatMessage("assistant", answer), user("And how do I fix it?")]
        prompt = eng.encode_chat(turn2)
        run, prefilled, vision = _delta(eng, prompt, SamplingParams(max_tokens=3, **LP))
    assert prefilled <= 0.10 * len(prompt.ids), (prefilled, len(prompt.ids))
    assert vision == 0
    assert_same_run(run.tokens, run.logprobs, *reference(tiny, prompt, SamplingParams(max_tokens=3, **LP)))


def test_case4_multi_turn_with_system_prompt_reuses_vision_features(tiny):
    """v3 puts the system prompt in the last user turn, so turn 2 diverges right after `<s>[INST]`."""
    img = image(4, 4, 6)
    with engine(tiny) as eng:
        turn1 = [SYSTEM, user(img, "What is shown?")]
        first, _, _ = _delta(eng, eng.encode_chat(turn1), SamplingParams(max_tokens=8))
        turn2 = [*turn1, ChatMessage("assistant", tiny.tokenizer.decode(first.tokens)), user("More detail?")]
        _, prefilled, vision = _delta(eng, eng.encode_chat(turn2), SamplingParams(max_tokens=3))
    assert vision == 0  # features come from the digest-keyed cache
    assert prefilled > 0.5 * len(eng.encode_chat(turn2).ids)  # documented: the text is recomputed


def test_identical_size_images_never_share_blocks(tiny):
    with engine(tiny, prefix_block=4) as eng:
        a, b = image(3, 3, 10), image(3, 3, 11)
        params = SamplingParams(max_tokens=4, **LP)
        _delta(eng, eng.encode_chat([user(a, "Same question")]), params)
        prompt_b = eng.encode_chat([user(b, "Same question")])
        run, prefilled, _ = _delta(eng, prompt_b, params)
    assert (
        prefilled >= len(prompt_b.ids) - 2
    )  # only `<s>[INST]` could match: the grid differs from token 2 on
    assert_same_run(run.tokens, run.logprobs, *reference(tiny, prompt_b, params))


def test_token_keys_carry_image_content():
    ids = [1, 3, 10, 10, 12, 10, 10, 13, 4]
    ka = token_keys(ids, ["a"], [4], img_id=10)
    kb = token_keys(ids, ["b"], [4], img_id=10)
    assert ka.codes.tolist() == kb.codes.tolist() == [1, 3, -1, -2, 12, -3, -4, 13, 4]  # -(1 + patch index)
    assert ka.spans == ((2, 7, "a"),) and kb.spans == ((2, 7, "b"),)
    assert chain_keys(ka, 2)[0] == chain_keys(kb, 2)[0]  # block 0 = `<s>[INST]`
    assert all(x != y for x, y in zip(chain_keys(ka, 2)[1:], chain_keys(kb, 2)[1:]))
    # generated ids appended to a prompt's keys are plain tokens: the prompt's blocks keep their keys
    assert chain_keys(ka + [7, 8], 2)[:4] == chain_keys(ka, 2)


def test_block_keys_tell_apart_where_a_second_image_starts():
    """Two images of 2 patches vs one image of 4 (same digests listed): different codes, different keys."""
    ids = [1, 10, 10, 10, 10, 4]
    two = token_keys(ids, ["a", "a"], [2, 2], img_id=10)
    one = token_keys(ids, ["a"], [4], img_id=10)
    assert chain_keys(two, 6) != chain_keys(one, 6)


def test_cache_on_and_off_agree_and_eviction_under_tiny_budget_is_safe(tiny):
    shared = "Shared instructions for every request. " * 6
    prompts_spec = [(shared + f"question {i} " * (i + 1), image(2, 1 + i % 3, i % 2)) for i in range(10)]
    params = SamplingParams(max_tokens=12, **LP)
    results = {}
    for label, budget in (("off", 0), ("tiny", 6 * 2 * 2 * 8 * 2 * 16 * 4), ("big", 2**26)):
        with engine(tiny, max_batch=4, prefix_block=8, prefix_cache_bytes=budget) as eng:
            prompts = [eng.encode_chat([user(img, text)]) for text, img in prompts_spec]
            runs = [Run(eng.submit(p, params)) for p in prompts]
            for r in runs:
                r.wait()
            stats = eng.stats()["prefix_cache"]
            results[label] = runs
            if label == "tiny":
                assert stats["evicted_blocks"] > 0 and stats["capacity_blocks"] <= 6
            assert stats["pinned_blocks"] == 0
    for off, tiny_run, big in zip(results["off"], results["tiny"], results["big"]):
        assert_same_run(tiny_run.tokens, tiny_run.logprobs, off.tokens, off.logprobs)
        assert_same_run(big.tokens, big.logprobs, off.tokens, off.logprobs)


def test_pinned_blocks_are_never_evicted():
    import torch

    from pixdesk.engine.cache import KVCache

    kv = KVCache(1, 1, 64, 1, 2, dtype=torch.float32)
    kv.k[0][0] = torch.arange(65.0)[:, None, None]
    cache = PrefixCache(kv, block=4, budget_bytes=2 * 1 * 4 * 1 * 2 * 4 * 2)  # room for 2 blocks
    assert cache.capacity == 2
    keys = chain_keys(list(range(8)), 4)
    cache.insert(keys, kv, 0, 8)
    assert torch.equal(cache.store[cache.entries[keys[1]].index, 0, 0, :, 0, 0], torch.arange(4.0, 8.0))
    held = cache.match(keys, 8)
    other = chain_keys(list(range(100, 108)), 4)
    assert cache.insert(other, kv, 0, 8) == 0  # everything is pinned: nothing evicted
    again = cache.match(keys, 8)
    assert again.tokens == 8 and cache.pinned_blocks == 2
    cache.release(held)
    cache.release(again)
    assert cache.pinned_blocks == 0
    assert cache.insert(other, kv, 0, 8) >= 1
    assert cache.stats.evicted_blocks >= 1


@pytest.mark.parametrize("n_prompt", [5, 16, 17])
def test_last_prompt_token_is_always_prefilled(tiny, n_prompt):
    """Even a fully cached prompt re-runs its last token, which the first sampled token needs."""
    with engine(tiny, prefix_block=4) as eng:
        prompt = eng.encode_chat([user("word " * n_prompt)])
        _delta(eng, prompt, SamplingParams(max_tokens=2))
        run, prefilled, _ = _delta(eng, prompt, SamplingParams(max_tokens=2, **LP))
    assert 1 <= prefilled <= 4
    assert_same_run(run.tokens, run.logprobs, *reference(tiny, prompt, SamplingParams(max_tokens=2, **LP)))
