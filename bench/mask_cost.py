"""Structured-output mask cost on the real Pixtral vocabulary (131072 ids), CPU.

    python bench/mask_cost.py [--tokenizer PATH] [--repeat 3]

For each library: tokenizer build, grammar compile (per schema, no cache), and the per-step mask along a
valid document of each schema (fill the mask for the state, then consume the document's next token).
llguidance is required (runtime dependency); xgrammar is measured when importable (e.g. installed with
`pip install --target /tmp/xgr --no-deps xgrammar apache-tvm-ffi` and run with PYTHONPATH=/tmp/xgr).
The last rows time pixdesk's own GrammarMask step (llguidance mask + bool unpack + closing walk) with and
without the logits masking, which is what the scheduler pays per constrained token.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from pixdesk.engine.grammar import JSON_OPTIONS, GrammarFactory
from pixdesk.tasks.chart import SCHEMA as CHART
from pixdesk.tasks.receipt import SCHEMA as RECEIPT
from pixdesk.tokenizer.tekken import Tekkenizer

SIMPLE = {"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}
DOCS = {
    "simple": (SIMPLE, {"total": 12.5}),
    "chart": (CHART, {"title": "Quarterly revenue by region", "chart_type": "bar",
                      "x_axis": {"title": "Quarter", "unit": ""},
                      "y_axis": {"title": "Revenue", "unit": "million EUR"},
                      "categories": ["Q1", "Q2", "Q3", "Q4"],
                      "series": [{"name": "North", "values": [12.5, 14, 15.25, 18]},
                                 {"name": "South", "values": [8, 9.5, None, 11.75]}]}),
    "receipt": (RECEIPT, {"merchant": "Café Rosa", "date": "2024-03-07", "currency": "EUR",
                          "items": [{"name": "Espresso", "quantity": 2, "unit_price": 2.5, "total": 5},
                                    {"name": "Croissant au beurre", "quantity": 1, "unit_price": 3.2,
                                     "total": 3.2}],
                          "subtotal": 8.2, "tax": 0.82, "tip": None, "total": 9.02}),
}  # fmt: skip


def _ms(seconds: list[float]) -> tuple[float, float]:
    xs = sorted(s * 1000 for s in seconds)
    return statistics.fmean(xs), xs[min(len(xs) - 1, int(0.99 * len(xs)))]


def bench_llguidance(tok: Tekkenizer, docs: dict, repeat: int) -> list[tuple]:
    import llguidance.numpy as lnp
    from llguidance import LLMatcher

    t = time.perf_counter()
    factory = GrammarFactory(tok, background=False)
    _ = factory.lltokenizer
    build = (time.perf_counter() - t) * 1000
    rows = []
    for name, (schema, doc) in docs.items():
        ids = tok.encode(json.dumps(doc, ensure_ascii=False)) + [tok.EOS]
        compile_s, steps = [], []
        bits = lnp.allocate_token_bitmask(1, tok.n_words)
        for _ in range(repeat):
            t = time.perf_counter()
            m = LLMatcher(
                factory.lltokenizer, LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
            )
            compile_s.append(time.perf_counter() - t)
            for tid in ids:
                t = time.perf_counter()
                lnp.fill_next_token_bitmask(m, bits, 0)
                steps.append(time.perf_counter() - t)
                assert (int(bits[0, tid // 32]) >> (tid % 32)) & 1, f"{name}: token {tid} not in the mask"
                assert m.consume_token(tid), m.get_error()
        rows.append(("llguidance", name, build, statistics.fmean(compile_s) * 1000, *_ms(steps), len(ids)))
    rows += bench_pixdesk_mask(factory, tok, docs, repeat)
    return rows


def bench_pixdesk_mask(factory: GrammarFactory, tok: Tekkenizer, docs: dict, repeat: int) -> list[tuple]:
    rows = []
    for name, (schema, doc) in docs.items():
        ids = tok.encode(json.dumps(doc, ensure_ascii=False)) + [tok.EOS]
        logits = torch.randn(tok.n_words)
        compile_s, steps, with_logits = [], [], []
        for _ in range(repeat):
            t = time.perf_counter()
            mask = factory.json_schema(schema, max_tokens=len(ids) + 64)
            compile_s.append(time.perf_counter() - t)
            for tid in ids:
                t = time.perf_counter()
                out = mask.mask(logits)
                with_logits.append(time.perf_counter() - t)
                assert out[tid] > -float("inf")
                t = time.perf_counter()
                mask.accept(tid)  # background=False: the next mask and closing are computed here
                steps.append(time.perf_counter() - t)
        rows.append(("pixdesk step", name, 0.0, statistics.fmean(compile_s) * 1000, *_ms(steps), len(ids)))
        rows.append(("pixdesk mask()", name, 0.0, 0.0, *_ms(with_logits), len(ids)))
    return rows


def bench_xgrammar(tok: Tekkenizer, docs: dict, repeat: int) -> list[tuple]:
    try:
        import xgrammar as xgr
    except ImportError:
        print("xgrammar: not importable, skipped", file=sys.stderr)
        return []
    t = time.perf_counter()
    vocab = [b"" if tok.is_special(i) else tok.id_to_bytes(i) for i in range(tok.n_words)]  # b"": special
    info = xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, vocab_size=tok.n_words, stop_token_ids=[tok.EOS])
    build = (time.perf_counter() - t) * 1000
    rows = []
    for name, (schema, doc) in docs.items():
        ids = tok.encode(json.dumps(doc, ensure_ascii=False)) + [tok.EOS]
        compile_s, steps = [], []
        bits = xgr.allocate_token_bitmask(1, info.vocab_size)
        for _ in range(repeat):
            compiler = xgr.GrammarCompiler(info, max_threads=2, cache_enabled=False)
            t = time.perf_counter()
            cg = compiler.compile_json_schema(
                json.dumps(schema), any_whitespace=False, separators=(", ", ": ")
            )
            m = xgr.GrammarMatcher(cg)
            compile_s.append(time.perf_counter() - t)
            for tid in ids:
                t = time.perf_counter()
                m.fill_next_token_bitmask(bits)
                steps.append(time.perf_counter() - t)
                assert m.accept_token(tid), f"{name}: xgrammar rejected token {tid}"
        rows.append(("xgrammar", name, build, statistics.fmean(compile_s) * 1000, *_ms(steps), len(ids)))
    return rows


def main() -> None:
    import mistral_common

    default = Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", type=Path, default=default)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tok = Tekkenizer.from_file(args.tokenizer)
    rows = bench_llguidance(tok, DOCS, args.repeat) + bench_xgrammar(tok, DOCS, args.repeat)
    cols = [
        "library",
        "schema",
        "tokenizer build ms",
        "grammar compile ms",
        "per-step mean ms",
        "per-step p99 ms",
    ]
    out = [
        f"vocabulary: {args.tokenizer.name}, {tok.n_words} ids; torch threads {torch.get_num_threads()}",
        "",
    ]
    out += ["| " + " | ".join([*cols, "steps"]) + " |", "|---" * (len(cols) + 1) + "|"]
    for lib, name, build, comp, mean, p99, n in rows:
        b = f"{build:.0f}" if build else "-"
        c = f"{comp:.2f}" if comp else "-"
        out.append(f"| {lib} | {name} | {b} | {c} | {mean:.3f} | {p99:.3f} | {n} |")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
