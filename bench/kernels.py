"""Kernel-level decode figures on a GPU, each a chain over Pixtral-12B's 40 layers captured in a CUDA graph:

- the decoder's 161 linears (fused q|k|v, wo, fused gate|up, down; LM head) with our int8 / int4 kernels at
  1 and 8 rows, against the bytes they read;
- decode attention at the 4,352-position bucket for 1 and 8 slots: the matmul form (`gqa_decode`) and the
  multiply-reduce form (`gqa_decode_reduce`), each compiled as the static step compiles it.

    PYTHONPATH=. python bench/kernels.py            # writes $OUT/kernels.json
    PARTS=attention ATTENTION=kernel,kernel64 ...  # forms: matmul, kernel (split_keys), kernelN (N keys a program)
    ATTENTION=kernel64b32w2s3 ...                  # + keys a step, warps, stages of the split kernel
    ATTN_SLOTS=1 ...                                # slot counts (default 1,8)
    PARTS=dense_chains ...                          # bf16 one row per shape: cuBLAS against dense_triton
    INT4_LAYOUT=row ...                             # int4 buffers row-major instead of Int4Linear's group-major
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import torch

ATTENTION = os.environ.get("ATTENTION", "matmul,kernel,kernel256").split(",")
SHAPES = [(6144, 5120), (5120, 4096), (28672, 5120), (5120, 14336)] * 40 + [(131072, 5120)]


def graph_time(fn, iters: int = 20) -> float:
    """Seconds a replay of fn() captured in a CUDA graph."""
    return replay_seconds(captured_graph(fn), iters)


def captured_graph(fn) -> torch.cuda.CUDAGraph:
    """fn() warmed up on a side stream, then captured in a CUDA graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


def replay_seconds(g: torch.cuda.CUDAGraph, iters: int) -> float:
    """Seconds a replay of g, over `iters` back to back after one untimed."""
    g.replay()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        g.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def linear_chains(res: dict) -> None:
    """int8 (our Triton GEMV), int4 through torch's tinygemm (the copy prepare_for_device can add), int4
    through our Triton GEMV (its K-split partials, whose sum the compiled step folds into the next kernel);
    plus a check of each against the dequantized weight. LINEARS=int8,int4_triton picks; `int8` is unsplit,
    `int8_split` has quant_triton.INT8_SPLIT_K on and is timed as partials, the way int4_triton is."""
    from pixdesk.model import int4_mma, int4_triton, quant_triton
    from pixdesk.model.quant import Int4Linear, Int8Linear, dequantize

    for mode in os.environ.get("LINEARS", "int8,int4_tinygemm,int4_triton").split(","):
        quant_triton.INT8_SPLIT_K = mode == "int8_split"
        cls = Int8Linear if mode.startswith("int8") else Int4Linear
        mods = []
        for n, k in SHAPES:
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * k**-0.5
            mods.append(cls.from_float(w))
            del w
        if mode.startswith("int4") and os.environ.get("INT4_LAYOUT") == "row":
            for m in mods:  # the row-major layout of quantize_int4 (before session 10), for comparison
                m.qweight, m.scales, m.mins = (
                    m.qweight.reshape(m.out_features, -1),
                    m.scales.contiguous(),
                    m.mins.contiguous(),
                )
        x = torch.randn(3, 5120, device="cuda", dtype=torch.bfloat16)
        ref = x.float() @ dequantize(mods[0]).T
        if mode == "int4_tinygemm":
            for m in mods:
                m.add_tinygemm()
        nbytes = sum(b.numel() * b.element_size() for m in mods for b in m.buffers())
        nbytes += sum(
            t.numel() * t.element_size() for m in mods for t in (getattr(m, "cuda_pack", None) or ())
        )
        partials = mode in ("int4_triton", "int8_split", "int4_mma")
        mma = mode == "int4_mma"  # one row only
        if mma:
            x, ref = x[:1], ref[:1]
        fn = partial_gemv(mods[0], mma) if partials else mods[0]
        y = fn(x).float()
        y = y.sum(0) if y.dim() == 3 else y
        res[f"{mode}_check_rel_err"] = float((y - ref).abs().max() / ref.abs().max())
        for rows in (1,) if mma else (1, 8):
            xs = {k: torch.randn(rows, k, device="cuda", dtype=torch.bfloat16) for k in (4096, 5120, 14336)}
            t = graph_time(chain(mods, xs, partials, mma))
            res[f"{mode}_chain_rows{rows}_ms"] = t * 1e3
            res[f"{mode}_chain_rows{rows}_GBps"] = nbytes / t / 1e9
            if rows == 1 and mode.startswith("int4"):
                per_shape(res, mode, mods, xs, partials, mma)
        res[f"{mode}_weight_GB"] = nbytes / 1e9
        kernels = {"int8": [quant_triton._int8_gemv], "int8_split": [quant_triton._int8_gemv],
                   "int4_triton": [int4_triton._gemv1, int4_triton._gemv_rows],
                   "int4_mma": [int4_mma._gemv1_mma]}.get(mode, [])  # fmt: skip
        res[f"{mode}_configs"] = {str(k): str(v) for kern in kernels for k, v in kern.cache.items()}
        print(json.dumps(res), flush=True)
        mods.clear()
        torch.cuda.empty_cache()


def dense_chains(res: dict) -> None:
    """bf16 one-row products per shape, each a chain of 40 distinct weights (the LM head alone): cuBLAS
    (F.linear, as the decode step calls it) against dense_triton's split-K GEMV (its partials, whose sum the
    compiled step fuses into the next kernel), with the bytes read per second."""
    from pixdesk.model import dense_triton

    for n, k in sorted(set(SHAPES)):
        count = 1 if n == 131072 else 40
        ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * k**-0.5 for _ in range(count)]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        ref = x.float() @ ws[0].float().T
        got = dense_triton.gemv(x, ws[0]).float().sum(0)
        res[f"dense_{n}x{k}_check_rel_err"] = float((got - ref).abs().max() / ref.abs().max())
        nbytes = count * n * k * 2
        for name, fn in (("cublas", torch.nn.functional.linear), ("triton", dense_triton.gemv)):
            t = graph_time(lambda fn=fn, x=x, ws=ws: [fn(x, w) for w in ws])
            res[f"dense_{n}x{k}_{name}_us"] = t * 1e6 / count
            res[f"dense_{n}x{k}_{name}_GBps"] = nbytes / t / 1e9
        res[f"dense_{n}x{k}_splits"] = dense_triton.splits(n, k, x.device)
        res[f"dense_{n}x{k}_config"] = str(next(iter(dense_triton._gemv.cache.values()), None))
        dense_triton._gemv.cache.clear()  # so the next shape's config is the one reported
        print(json.dumps(res), flush=True)
        ws.clear()
        torch.cuda.empty_cache()


def per_shape(res: dict, mode: str, mods, xs, partials: bool, mma: bool) -> None:
    """One row, each shape's 40 weights (the LM head alone) as their own chain: us a linear and GB/s."""
    for n, k in sorted(set(SHAPES)):
        sub = [m for m in mods if (m.out_features, m.in_features) == (n, k)]
        nbytes = sum(b.numel() * b.element_size() for m in sub for b in m.buffers())
        nbytes += sum(
            t.numel() * t.element_size() for m in sub for t in (getattr(m, "cuda_pack", None) or ())
        )
        t = graph_time(chain(sub, xs, partials, mma))
        res[f"{mode}_{n}x{k}_us"] = t * 1e6 / len(sub)
        res[f"{mode}_{n}x{k}_GBps"] = nbytes / t / 1e9


def partial_gemv(m, mma: bool = False):
    """The GEMV kernel alone, returning its K-split partials (the compiled step fuses their sum); `mma`: the
    one-row int4 kernel on the tensor cores."""
    from pixdesk.model import int4_mma, int4_triton, quant_triton
    from pixdesk.model.quant import Int8Linear

    if mma:
        return lambda x: int4_mma.int4_gemv_mma(x, m.qweight, m.scales, m.mins)
    if isinstance(m, Int8Linear):
        return lambda x: quant_triton.int8_gemv(x, m.qweight, m.scales)
    return lambda x: int4_triton.int4_gemv(x, m.qweight, m.scales, m.mins, m.group_size)


def chain(mods, xs, partials: bool = False, mma: bool = False):
    fns = [partial_gemv(m, mma) if partials else m for m in mods]
    return lambda: [f(xs[m.in_features]) for f, m in zip(fns, mods)]


def gqa_decode_reduce(q, keys, values, mask):
    """`gqa_decode` as multiply-and-sum over the cache's (B, S, Hkv, D) layout in fp32: compiled, each sum is
    one reduction reading K (or V) in place, with no transposed copy. Measured, not used: slower than both
    the matmul form at 1 slot and the split-key kernel (NOTES.md)."""
    B, _, H, D = q.shape
    Hkv = keys.shape[2]
    qg = q.view(B, 1, Hkv, H // Hkv, D).float()  # (B, 1, Hkv, G, D)
    scores = (qg * keys[:, :, :, None, :].float()).sum(-1) * D**-0.5  # (B, S, Hkv, G)
    scores = scores.masked_fill(~mask[:, :, None, None], float("-inf"))
    probs = torch.softmax(scores, dim=1)  # over S
    out = (probs[..., None] * values[:, :, :, None, :].float()).sum(1)  # (B, Hkv, G, D)
    return out.reshape(B, 1, H, D).to(q.dtype)


def attention_step(name, ks, vs):
    from pixdesk.engine.decode_attention import decode_attention
    from pixdesk.model.layers import gqa_decode

    fn = {"matmul": gqa_decode, "reduce": gqa_decode_reduce}.get(name)

    def step(q, key_pos, pos):
        n = key_pos.shape[0]
        if fn is None:  # the split-key kernel reads the whole cache tensor in place
            return [decode_attention(q[:, 0], k, v, pos + 1, n) for k, v in zip(ks, vs)]
        mask = key_pos[None, :] <= pos[:, None]
        return [fn(q, k[:, :n], v[:, :n], mask) for k, v in zip(ks, vs)]

    return torch.compile(step, fullgraph=True)


def kernel_variant(name: str) -> tuple[str, int | None, dict]:
    """"kernel128b32w8s2r96" -> ("kernel", 128 keys a program, {block_s: 32, num_warps: 8, num_stages: 2,
    maxnreg: 96}); every part after the form is optional."""
    m = re.fullmatch(r"([a-z]+?)(\d+)?(?:b(\d+))?(?:w(\d+))?(?:s(\d+))?(?:r(\d+))?", name)
    if m is None:
        raise ValueError(f"attention variant {name!r}: form[split][bBLOCK][wWARPS][sSTAGES][rREGISTERS]")
    form, split, block, warps, stages, regs = m.groups()
    keys = ("block_s", "num_warps", "num_stages", "maxnreg")
    launch = {k: int(v) for k, v in zip(keys, (block, warps, stages, regs)) if v}
    return form, int(split) if split else None, launch


def attention(res: dict) -> None:
    import pixdesk.engine.decode_attention as da

    S, T, Hkv, D, H = 4352, 4353, 8, 128, 32
    for slots in [int(n) for n in os.environ.get("ATTN_SLOTS", "1,8").split(",")]:
        ks = [torch.randn(slots, T, Hkv, D, device="cuda", dtype=torch.bfloat16) for _ in range(40)]
        vs = [torch.randn(slots, T, Hkv, D, device="cuda", dtype=torch.bfloat16) for _ in range(40)]
        q = torch.randn(slots, 1, H, D, device="cuda", dtype=torch.bfloat16)
        pos = torch.full((slots,), 4300, device="cuda")
        key_pos = torch.arange(S, device="cuda")
        torch._dynamo.mark_dynamic(key_pos, 0)
        for name in ATTENTION:  # "kernel": split_keys' choice; "kernel64" etc.: that many keys per program
            form, split, launch = kernel_variant(name)
            da.FIXED_SPLIT = split
            da.PARTIAL_LAUNCH.clear()
            da.PARTIAL_LAUNCH.update(launch)
            step = attention_step(form, ks, vs)
            t0 = time.perf_counter()
            step(q, key_pos, pos)
            res[f"attn_{name}_slots{slots}_compile_s"] = time.perf_counter() - t0
            t = graph_time(lambda step=step, q=q, key_pos=key_pos, pos=pos: step(q, key_pos, pos))
            da.FIXED_SPLIT = None
            da.PARTIAL_LAUNCH.clear()
            res[f"attn_{name}_slots{slots}_ms"] = t * 1e3
            res[f"attn_{name}_slots{slots}_GBps"] = 2 * 40 * slots * S * Hkv * D * 2 / t / 1e9
            print(json.dumps(res), flush=True)
        ks.clear()
        vs.clear()
        torch.cuda.empty_cache()


def main() -> None:
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    import triton

    res["triton"] = triton.__version__
    out = Path(os.environ.get("OUT", "bench-out"))
    out.mkdir(parents=True, exist_ok=True)
    parts = os.environ.get("PARTS", "attention,linear_chains").split(",")
    for part in [f for f in (attention, linear_chains, dense_chains) if f.__name__ in parts]:
        try:
            part(res)
        except Exception as exc:  # report and go on: one broken part must not hide the other
            res[f"{part.__name__}_error"] = repr(exc)[:1000]
        (out / "kernels.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
