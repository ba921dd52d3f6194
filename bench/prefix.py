"""CPU benchmark of the prefix cache and batching on a mid-size random model where compute dominates.

Prints cold vs warm time to first token for the three cases that must hit (PIXTRAL's v3 format puts the
system prompt in the last user turn), the reuse ratio, and batch-1 vs batch-8 decode throughput.

    PYTHONPATH=. python bench/prefix.py [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace

import torch

from pixdesk.engine.backend import LocalEngine
from pixdesk.engine.events import Delta
from pixdesk.engine.sampling import SamplingParams
from pixdesk.engine.scheduler_config import SchedulerConfig
from pixdesk.model.args import ModelArgs, TextArgs, VisionArgs
from pixdesk.tokenizer.chat import ChatMessage, ImageChunk, TextChunk
from pixdesk.tokenizer.image import PreparedImage
from pixdesk.weights.checkpoint import load_checkpoint
from pixdesk.weights.tiny import random_state_dict, write_checkpoint

MID = ModelArgs(
    text=TextArgs(
        dim=768, n_layers=8, head_dim=64, hidden_dim=2048, n_heads=12, n_kv_heads=4, vocab_size=4096
    ),
    vision=VisionArgs(384, 3, 1024, 16, 1024, 4, 6),
)
SYSTEM = ChatMessage("system", "You are pixdesk, a careful assistant for screenshots, charts and code. " * 30)


def image(rows: int, cols: int, seed: int) -> PreparedImage:
    px = torch.randn(3, rows * 16, cols * 16, generator=torch.Generator().manual_seed(seed))
    return PreparedImage(px, rows, cols, f"bench-{seed}", (cols * 16, rows * 16))


def user(*parts) -> ChatMessage:
    return ChatMessage(
        "user", [ImageChunk(p) if isinstance(p, PreparedImage) else TextChunk(p) for p in parts]
    )


def ttft(eng, messages, max_tokens=1) -> tuple[float, list[int], dict]:
    before = eng.stats()
    t0 = time.perf_counter()
    sub = eng.submit(eng.encode_chat(messages), SamplingParams(max_tokens=max_tokens))
    first, tokens = None, []
    for ev in sub:
        if isinstance(ev, Delta) and ev.token_ids and first is None:
            first = time.perf_counter() - t0
        if isinstance(ev, Delta):
            tokens += ev.token_ids
    after = eng.stats()
    delta = {k: after[k] - before[k] for k in ("prefilled_tokens", "reused_tokens", "vision_calls")}
    return first, tokens, delta


def cases(eng):
    rows = []
    img_a, img_b = image(16, 16, 1), image(16, 16, 2)
    # (1) same system prompt, different image
    cold, _, _ = ttft(eng, [SYSTEM, user(img_a, "What does this error mean?")])
    warm, _, d = ttft(eng, [SYSTEM, user(img_b, "What does this error mean?")])
    rows.append(("1 same system, new image", cold, warm, d))
    # (2) same system prompt, same image, new question (image_b is cached now)
    warm2, _, d2 = ttft(eng, [SYSTEM, user(img_b, "Which line is wrong?")])
    rows.append(("2 same system + image, new question", cold, warm2, d2))
    # (3) multi-turn without a system prompt
    eng.scheduler.prefix.__init__(eng.scheduler.kv, eng.config.prefix_block, eng.config.prefix_cache_bytes)
    turn1 = [user(image(16, 16, 3), "Explain this screenshot.")]
    cold3, ans, _ = ttft(eng, turn1, max_tokens=64)
    turn2 = [*turn1, ChatMessage("assistant", eng.tokenizer.decode(ans)), user("And how do I fix it?")]
    cold3b, _, _ = ttft(LocalEngine(eng.checkpoint, replace(eng.config, prefix_cache_bytes=0)).start(), turn2)
    warm3, _, d3 = ttft(eng, turn2)
    rows.append(("3 multi-turn, no system prompt", cold3b, warm3, d3))
    return rows


def throughput(ckpt, batch: int, n_tokens: int = 64) -> float:
    cfg = SchedulerConfig(max_batch=batch, max_context=1024, prefix_cache_bytes=0)
    with LocalEngine(ckpt, cfg) as eng:
        prompts = [eng.encode_chat([user(f"Write a story number {i}.")]) for i in range(batch)]
        t0 = time.perf_counter()
        subs = [eng.submit(p, SamplingParams(max_tokens=n_tokens)) for p in prompts]
        total = sum(s.text()[1].usage.completion_tokens for s in subs)
        return total / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as d:
        write_checkpoint(d, MID, random_state_dict(MID, seed=0))
        ckpt = load_checkpoint(d)
    cfg = SchedulerConfig(max_batch=4, max_context=2048, prefill_chunk=512)
    with LocalEngine(ckpt, cfg) as eng:
        ttft(eng, [user("warm-up")])
        rows = cases(eng)
    b1, b8 = throughput(ckpt, 1), throughput(ckpt, 8)
    print(
        f"\nmodel: dim {MID.text.dim}, {MID.text.n_layers} layers, vision {MID.vision.hidden_size}x"
        f"{MID.vision.num_hidden_layers}; {args.threads} threads; block {cfg.prefix_block}"
    )
    print(
        f"{'case':40} {'cold ms':>9} {'warm ms':>9} {'warm/cold':>9} {'reused':>7} {'prefilled':>9} "
        f"{'vision':>6}"
    )
    for name, cold, warm, d in rows:
        reuse = d["reused_tokens"] / max(1, d["reused_tokens"] + d["prefilled_tokens"])
        print(
            f"{name:40} {cold * 1e3:9.1f} {warm * 1e3:9.1f} {warm / cold:9.2f} {reuse:7.1%} "
            f"{d['prefilled_tokens']:9d} {d['vision_calls']:6d}"
        )
    print(f"\ndecode throughput: batch 1 {b1:.1f} tok/s, batch 8 {b8:.1f} tok/s ({b8 / b1:.2f}x)")


if __name__ == "__main__":
    main()
