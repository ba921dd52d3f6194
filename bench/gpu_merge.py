"""Join bench/gpu.py stage files into one results JSON with provenance, derived limits and target checks."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from bench.gpu_model import PIXTRAL_12B

PROMPT_TOKENS = 4183
GENERATED = 128
STAGES = ("limits", "peer", "bf16", "check", "ready", "int8", "int4")


def _load(d: Path, name: str) -> dict:
    p = d / f"stage-{name}.json"
    return json.loads(p.read_text()) if p.exists() else {}


def kv_bytes_per_token() -> int:
    t = PIXTRAL_12B.text
    return 2 * t.n_layers * t.n_kv_heads * t.head_dim * 2  # K and V, bf16


def ttft_flop_minimum() -> float:
    """FLOPs of the image prompt's prefill: decoder linears over every position, LM head once, vision, attention."""
    t, v = PIXTRAL_12B.text, PIXTRAL_12B.vision
    T, L = PROMPT_TOKENS, 64 * 64
    q, kv = t.n_heads * t.head_dim, t.n_kv_heads * t.head_dim
    per_layer = t.dim * (q + 2 * kv) + q * t.dim + 3 * t.dim * t.hidden_dim
    decoder = 2 * T * t.n_layers * per_layer
    lm_head = 2 * t.dim * t.vocab_size
    vis_layer = 4 * v.hidden_size**2 + 3 * v.hidden_size * v.intermediate_size
    vision = 2 * L * (v.num_hidden_layers * vis_layer + 3 * 256 * v.hidden_size)
    adapter = 2 * L * (v.hidden_size * t.dim + t.dim * t.dim)
    attn_text = 4 * q * (T * (T + 1) / 2) * t.n_layers
    attn_vision = 4 * v.hidden_size * L * L * v.num_hidden_layers
    return decoder + lm_head + vision + adapter + attn_text + attn_vision


def _cached_prefix(s: dict) -> dict:
    """The b1 decode with no long prefill right before it (its prompt's prefix cached), and the SM clock of
    the timed runs (fresh images, then that one): after a 4,183-token prefill the power controller holds the
    clock down through the first tokens (session 16). Stages before session 16 lack both."""
    if "decode_tok_s_b1_cached_prefix" not in s:
        return {}
    return {"decode_tok_s_b1_cached_prefix": s["decode_tok_s_b1_cached_prefix"],
            "decode_b1_sm_mhz": s.get("decode_b1_sm_mhz")}  # fmt: skip


def quant_section(s: dict, read: float | None, kv: float, obvious_tok_s: float | None) -> dict:
    """One quantized mode: its own bytes limit (quantized weights + the same KV) and the stage's figures."""
    weights = s.get("decoder_weight_bytes")
    cap = s.get("cap_12gib") or {}
    return {
        "decode_tok_s_b1": s.get("decode_tok_s_b1"),
        **_cached_prefix(s),
        "decode_tok_s_b8": s.get("decode_tok_s_b8"),
        "ttft_cold_ms": s.get("ttft_cold_ms"),
        "ttft_warm_ms": s.get("ttft_warm_ms"),
        "ttft_warm_first_ms": s.get("ttft_warm_first_ms"),  # the first follow-up captures its rows graph
        "peak_mem_gb": s.get("peak_mem_gb"),
        "quantize_s": s.get("quantize_s"),
        "load_cached_s": s.get("load_cached_s"),
        "limit_tok_s": read * 1e9 / (weights + kv) if read and weights else None,
        "b8_ideal_ratio": 8 * (weights + kv) / (weights + 8 * kv) if weights else None,
        "gemv_ceiling_tok_s": obvious_tok_s,
        "logit_cosine_vs_bf16": s.get("logit_cosine_vs_bf16"),
        "top1_agreement_vs_bf16": s.get("top1_agreement_vs_bf16"),
        "group_size": s.get("group_size"),
        **({"cap_12gib": {k: cap.get(k) for k in ("ok", "max_context_auto", "context_reached", "decode_tok_s",
                                                  "ttft_ms", "peak_reserved_gib", "error")}} if cap else {}),
    }  # fmt: skip


def merge(d: Path) -> Path:
    limits = _load(d, "limits").get("result", {})
    peer = _load(d, "peer").get("result", {})
    bf16, check, ready = _load(d, "bf16"), _load(d, "check"), _load(d, "ready")
    read = limits.get("read_GBps") or peer.get("copy_GBps_rw")
    weights = limits.get("decoder_weight_GB", 23.15) * 1e9
    kv = kv_bytes_per_token() * (PROMPT_TOKENS + GENERATED / 2)
    limit = read * 1e9 / (weights + kv) if read else None
    b8_ideal = 8 * (weights + kv) / (weights + 8 * kv)
    matmul = peer.get("matmul_TFLOPs")
    flop_min_ms = ttft_flop_minimum() / (matmul * 1e12) * 1e3 if matmul else None
    out = {
        "provenance": {
            "git_sha": _git_sha(),
            "merged": time.strftime("%Y-%m-%d %H:%M:%S"),
            "commands": {n: _load(d, n).get("argv") for n in STAGES},
            # stages of different sittings can be joined: each says which commit ran it and when
            "stage_runs": {n: [_load(d, n).get("git_sha"), _load(d, n).get("when")] for n in STAGES if _load(d, n)},
            "torch": bf16.get("torch"),
            "context_tokens": {"prompt": PROMPT_TOKENS, "generated": GENERATED},
        },
        "device": bf16.get("device") or limits.get("gpu"),
        "read_GBps": read,
        "matmul_TFLOPs": matmul,
        "limit_tok_s": limit,
        "gemv_ceiling_tok_s": limits.get("bf16_gemv_chain_tok_s"),
        "transformers_eager_tok_s": peer.get("eager_decode_tok_s"),
        "transformers_static_tok_s": peer.get("static_decode_tok_s"),
        "transformers_ttft_ms": peer.get("eager_ttft_ms"),
        "ttft_flop_minimum_ms": flop_min_ms,
        "b8_ideal_ratio": b8_ideal,
        "bf16": {
            "decode_tok_s_b1": bf16.get("decode_tok_s_b1"),
            **_cached_prefix(bf16),
            "decode_tok_s_b8": bf16.get("decode_tok_s_b8"),
            "decode_tok_s_b1_in_8_slots": bf16.get("decode_tok_s_b1_in_8_slots"),  # a lone request, 7 idle slots
            "ttft_cold_ms": bf16.get("ttft_cold_ms"),
            "ttft_cold_ms_default_chunk": bf16.get("ttft_cold_ms_default_chunk"),  # the daemon's 512-token chunks
            "ttft_warm_ms": bf16.get("ttft_warm_ms"),
            "ttft_warm_first_ms": bf16.get("ttft_warm_first_ms"),  # the first follow-up captures its rows graph
            "peak_mem_gb": bf16.get("peak_mem_gb"),
            "ready_cold_s": ready.get("ready_cold_s"),
            "ready_warm_s": ready.get("ready_warm_s"),
            "ready_warm_again_s": ready.get("ready_warm_again_s"),  # a third start (session 7's finding)
            "load_s": (ready.get("child_warm") or {}).get("load_s"),
            "peak_host_rss_gb": (ready.get("child_warm") or {}).get("peak_host_rss_gb"),
            "logit_rel_err_vs_transformers": check.get("logit_rel_err_vs_transformers"),
        },
        "stages": {n: _load(d, n) for n in STAGES},
    }
    for mode, obvious in (("int8", "int8_compiled_tok_s"), ("int4", "int4_tinygemm_tok_s")):
        if _load(d, mode):
            out[mode] = quant_section(_load(d, mode), read, kv, limits.get(obvious))
    device = (out["device"] or "unknown").replace(" ", "-")
    path = Path(__file__).parent / "results" / f"{time.strftime('%Y-%m-%d')}-{device}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print_table(out)
    print(f"\nwrote {path}")
    return path


def _git_sha() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None
    except OSError:
        return None


def _ratio(a, b):
    return a / b if a and b else None


def print_table(r: dict) -> None:
    b = r["bf16"]
    rows = [
        ("decode b1 tok/s", b["decode_tok_s_b1"], "vs limit", _ratio(b["decode_tok_s_b1"], r["limit_tok_s"]), ">= 0.80"),
        ("", None, "vs transformers static", _ratio(b["decode_tok_s_b1"], r["transformers_static_tok_s"]), ">= 1.8"),
        ("", b.get("decode_tok_s_b1_cached_prefix"), "prefix cached, vs limit",
         _ratio(b.get("decode_tok_s_b1_cached_prefix"), r["limit_tok_s"]), ""),
        ("decode b8 tok/s", b["decode_tok_s_b8"], "b8/b1 vs ideal",
         _ratio(_ratio(b["decode_tok_s_b8"], b["decode_tok_s_b1"]), r["b8_ideal_ratio"]), ">= 0.8"),
        ("TTFT cold ms", b["ttft_cold_ms"], "vs FLOP minimum", _ratio(b["ttft_cold_ms"], r["ttft_flop_minimum_ms"]),
         "<= 1.15"),
        ("", b.get("ttft_cold_ms_default_chunk"), "daemon's default chunks", _ratio(
            b.get("ttft_cold_ms_default_chunk"), r["ttft_flop_minimum_ms"]), ""),
        ("TTFT warm ms", b["ttft_warm_ms"], "warm / cold", _ratio(b["ttft_warm_ms"], b["ttft_cold_ms"]), "<= 0.10"),
        ("logit rel err", b["logit_rel_err_vs_transformers"], "", None, "<= 2e-2"),
        ("ready warm s", b["ready_warm_s"], "", None, "<= 20"),
        ("", b.get("ready_warm_again_s"), "a third start", None, ""),
        ("ready cold s", b["ready_cold_s"], "", None, "reported"),
        ("peak GPU mem GB", b["peak_mem_gb"], "", None, ""),
    ]  # fmt: skip
    print(f"device {r['device']}: read {r['read_GBps']} GB/s, matmul {r['matmul_TFLOPs']} TFLOP/s, "
          f"bytes limit {_f(r['limit_tok_s'])} tok/s, GEMV ceiling {r['gemv_ceiling_tok_s']} tok/s, "
          f"transformers eager {r['transformers_eager_tok_s']} / static {r['transformers_static_tok_s']} tok/s, "
          f"TTFT {r['transformers_ttft_ms']} ms, FLOP-min TTFT {_f(r['ttft_flop_minimum_ms'])} ms")  # fmt: skip
    for mode, b1_target in (("int8", ">= 0.65"), ("int4", ">= 0.55")):
        q = r.get(mode)
        if not q:
            continue
        rows += [
            (f"{mode} b1 tok/s", q["decode_tok_s_b1"], f"vs its limit {_f(q['limit_tok_s'])}",
             _ratio(q["decode_tok_s_b1"], q["limit_tok_s"]), b1_target),
            ("", q.get("decode_tok_s_b1_cached_prefix"), "prefix cached, vs limit",
             _ratio(q.get("decode_tok_s_b1_cached_prefix"), q["limit_tok_s"]), ""),
            ("", None, f"vs obvious kernel {_f(q['gemv_ceiling_tok_s'])}",
             _ratio(q["decode_tok_s_b1"], q["gemv_ceiling_tok_s"]), ""),
            (f"{mode} b8 tok/s", q["decode_tok_s_b8"], "b8/b1 vs ideal",
             _ratio(_ratio(q["decode_tok_s_b8"], q["decode_tok_s_b1"]), q["b8_ideal_ratio"]), ">= 0.8"),
            (f"{mode} TTFT cold ms", q["ttft_cold_ms"], "", None, ""),
            (f"{mode} cosine", q["logit_cosine_vs_bf16"], "top-1 agreement", q["top1_agreement_vs_bf16"], ""),
            (f"{mode} quantize s", q["quantize_s"], "load cached s", q["load_cached_s"], ""),
            (f"{mode} peak GPU GB", q["peak_mem_gb"], "", None, ""),
        ]  # fmt: skip
        cap = q.get("cap_12gib")
        if cap:
            rows.append((f"{mode} 12 GiB ctx", cap.get("context_reached"), f"auto max_context {cap.get('max_context_auto')}",
                         None, ">= 8192"))  # fmt: skip
    print(f"{'measure':18} {'value':>10}  {'ratio':24} {'':>7}  target")
    for name, value, label, ratio, target in rows:
        print(f"{name:18} {_f(value):>10}  {label:24} {_f(ratio):>7}  {target}")


def _f(x) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if isinstance(x, float) else str(x)
