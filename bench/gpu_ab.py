"""bench/gpu.py stage `ab`: switchable variants of the decode step on one model, in one process, through the
engine: b1 tok/s at the bench context and the greedy ids of the same prompt, which must not change (a faster
step that decodes differently is a bug, not a speed-up). Variants that change the K splits change the order
of the sums, so there `same_ids_as_baseline` is reported, not required.

    AB=baseline,no_pdl PYTHONPATH=. python3 bench/gpu.py --stage ab --out $OUT      # bf16 weights
    AB_QUANT=int4 AB=baseline,no_pdl,splits2 ...                                     # int4 weights
"""

from __future__ import annotations

import os

from bench.gpu_model import DEVICE, served_checkpoint
from bench.kernels import kernel_variant

_DEFAULT_PINNED: dict = {}  # int4_mma.PINNED and MAXNREG as imported, restored by every variant


def _variant(*, blas: str = "default", coordinate_descent: bool = False, autotune_gemm: bool = False,
             layer_regions: bool = True, dense_gemv: bool = False, gemv_shapes=(), pdl: bool = True,
             programs_per_sm: int = 4, max_splits: int = 8, min_blocks: int = 2, pinned: bool = True,
             fused_gated: bool = False, fused_rope: bool = True, gated_split: int | None = None,
             one_row_splits: dict | None = None, reduce_in_gemv: bool = True,
             attention: str = "kernel", combine_columns: int | None = 32, interleave_scales: bool = True,
             pinned_configs: dict | None = None, maxnreg: dict | None = None):  # fmt: skip
    """A setup that puts every switch the a/b stage compares into one state (so each variant starts from
    the same place), and drops Dynamo's compiled code and the GEMVs' autotune choices so the settings take
    effect."""

    def setup() -> None:
        import torch
        import torch._inductor.config as inductor

        import pixdesk.engine.decode_attention as da
        import pixdesk.engine.static as static
        import pixdesk.model.dense_gemv as dense
        from pixdesk.model import int4_fused, int4_mma, int4_triton, quant, quant_ops, quant_triton
        from pixdesk.model import pdl as pdl_module

        torch.backends.cuda.preferred_blas_library(blas)
        inductor.coordinate_descent_tuning = coordinate_descent
        inductor.max_autotune_gemm = autotune_gemm  # Triton GEMV templates against cuBLAS, per shape
        static.LAYER_REGIONS = layer_regions
        dense.DECODE_GEMV, dense.GEMV_SHAPES = dense_gemv, frozenset(gemv_shapes)
        pdl_module.ENABLED = pdl
        quant_triton.PROGRAMS_PER_SM = programs_per_sm  # the K splits of the quantized GEMVs
        quant_triton.MAX_SPLITS, quant_triton.MIN_BLOCKS_PER_SPLIT = max_splits, min_blocks
        int4_mma.USE_PINNED = pinned
        _DEFAULT_PINNED.setdefault("configs", dict(int4_mma.PINNED))
        int4_mma.PINNED.clear()
        int4_mma.PINNED.update({**_DEFAULT_PINNED["configs"], **(pinned_configs or {})})
        _DEFAULT_PINNED.setdefault("caps", dict(int4_mma.MAXNREG))
        int4_mma.MAXNREG.clear()
        caps = {**_DEFAULT_PINNED["caps"], **(maxnreg or {})}
        int4_mma.MAXNREG.update({shape: cap for shape, cap in caps.items() if cap})  # 0: no budget
        quant_ops.FUSED_GATED, quant_ops.FUSED_ROPE = fused_gated, fused_rope
        int4_fused.GATED_SPLIT, quant_ops.REDUCE_IN_GEMV = gated_split, reduce_in_gemv
        _, da.FIXED_SPLIT, launch = kernel_variant(attention)  # the split decode-attention kernel's config
        da.COMBINE_COLUMNS = combine_columns
        quant.INTERLEAVE_SCALES = interleave_scales  # read when the next engine loads its model
        da.PARTIAL_LAUNCH.clear()
        da.PARTIAL_LAUNCH.update(launch)
        int4_triton.ONE_ROW_SPLITS.clear()
        int4_triton.ONE_ROW_SPLITS.update(one_row_splits or {})
        for kernel in (int4_mma._gemv1_mma, int4_fused._gated, int4_fused._qkv_rope, int4_fused._reduced):
            kernel.cache.clear()
        torch._dynamo.reset()

    return setup


AB_VARIANTS = {  # name -> setup; the first is the baseline every other one is checked against
    "baseline": _variant(),
    "cublaslt": _variant(blas="cublaslt"),
    "coordinate_descent": _variant(coordinate_descent=True),
    "autotune_gemm": _variant(autotune_gemm=True),
    "whole_step": _variant(layer_regions=False),
    "dense_gemv": _variant(dense_gemv=True),  # every one-row bf16 decoder linear through dense_triton
    "dense_gemv_small": _variant(dense_gemv=True, gemv_shapes=[(6144, 5120), (5120, 4096), (5120, 14336)]),
    "no_pdl": _variant(pdl=False),  # every kernel launched plainly (model/pdl.py)
    "autotuned": _variant(pinned=False),  # int4_mma's configs autotuned per shape, none pinned
    "splits2": _variant(programs_per_sm=2),  # fewer K splits in the quantized GEMVs
    # more K splits: programs of 2-5 groups (wo: 16 splits), every group's weights in flight at once
    "splits16": _variant(programs_per_sm=8, max_splits=16, min_blocks=2),
    "splits32": _variant(programs_per_sm=16, max_splits=32, min_blocks=1),  # wo and down: 32 splits
    # int4 at one row: the SiLU x up and the RoPE + cache write as kernels of their own (int4_fused.py)
    "unfused_rope": _variant(fused_rope=False),
    "fused_gated": _variant(fused_gated=True),
    "gated_unsplit": _variant(fused_gated=True, gated_split=1),  # gate|up in one K pass, no counter
    # the one-row int4 GEMVs' K splits per shape (int4_triton.ONE_ROW_SPLITS; bench/int4_splits.py)
    "down8": _variant(one_row_splits={(5120, 14336): 8}),  # k_splits' rule (pinned: 16 on Hopper)
    "down7": _variant(one_row_splits={(5120, 14336): 7}),
    "wo16": _variant(one_row_splits={(5120, 4096): 16}),
    "wo4": _variant(one_row_splits={(5120, 4096): 4}),
    "gu2": _variant(one_row_splits={(28672, 5120): 2}),  # gate|up (pinned on Hopper: 5)
    "gu8": _variant(one_row_splits={(28672, 5120): 8}),
    "qkv10": _variant(one_row_splits={(6144, 5120): 10}),  # q|k|v (k_splits: 8), the fused RoPE form too
    "qkv5": _variant(one_row_splits={(6144, 5120): 5}),
    # bench/kernels.py's variant names (or any as attn_<name>, see `variant`)
    "attn": _variant(attention=os.environ.get("AB_ATTN", "kernel")),
    # the partials left for the next kernel to sum, not summed in the GEMV (int4_fused.reduced), at 16 or 8 splits
    "unreduced": _variant(reduce_in_gemv=False),
    "unreduced_down8": _variant(reduce_in_gemv=False, one_row_splits={(5120, 14336): 8}),
    # decode attention's merge as one program a head (decode_attention.COMBINE_COLUMNS None), not 32 columns
    "combine_head": _variant(combine_columns=None),
    # int4 scales and minimums as two buffers, one 4-byte word each a load (before session 16)
    "separate_scales": _variant(interleave_scales=False),
    # session 16's int4 one-row configs (gate|up at 4 splits, q|k|v's registers left to ptxas, down in the
    # cp.async pipeline, wo at 8 splits and 8 warps), and each of session 17's changes undone alone
    "s16_defaults": _variant(one_row_splits={(28672, 5120): 4, (5120, 4096): 8}, maxnreg={(6144, 5120): 0},
                             pinned_configs={(5120, 14336): (4, False, 3), (5120, 4096): (8, True, 1)}),  # fmt: skip
    "gu4": _variant(one_row_splits={(28672, 5120): 4}),
    "qkv_free_regs": _variant(maxnreg={(6144, 5120): 0}),
    "down_pipelined": _variant(pinned_configs={(5120, 14336): (4, False, 3)}),
    "wo8_w8": _variant(pinned_configs={(5120, 4096): (8, True, 1)}, one_row_splits={(5120, 4096): 8}),
}


def variant(name: str):
    """AB_VARIANTS[name], or for "attn_<variant>" the split decode-attention kernel as bench/kernels.py's
    variant name gives it (e.g. attn_kernel64s1, attn_kernelr96: one stage, a register budget of 96)."""
    if name.startswith("attn_"):
        return _variant(attention=name.removeprefix("attn_"))
    return AB_VARIANTS[name]


def host_ms_per_step(before: dict, after: dict) -> dict:
    """Between two engine stats snapshots: the host's time a decode step launching it and blocked on its
    picks (waiting ~0 means the host, not the device, sets the pace)."""
    steps = max(after["decode_steps"] - before["decode_steps"], 1)
    return {f"{key}_ms_per_step": 1e3 * (after[f"decode_{key}_s"] - before[f"decode_{key}_s"]) / steps
            for key in ("launch", "wait")}  # fmt: skip


def replay_ms(decoder, context: int, reps: int = 100) -> float | None:
    """Mean time of the static step's graph for `context` replayed back to back (None: no such graph)."""
    import time

    import torch

    entry = decoder.graphs.get(decoder.bucket(context)) if decoder is not None else None
    if entry is None:
        return None
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        entry[0].replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps * 1e3


def stage_ab(args, save, engine_for, timed_run, prompt, out) -> None:
    """The variants named in $AB (all by default) after the baseline, on bf16 weights or, with $AB_QUANT, on
    int8/int4 ones quantized in place; `prompt(seed)` is the bench's image prompt, `out` a scratch folder."""
    import torch

    quant = os.environ.get("AB_QUANT", "none")
    res: dict = {"device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu-smoke", "quant": quant,
                 "torch": torch.__version__, "variants": {}}  # fmt: skip
    ckpt = served_checkpoint(quant, out)
    baseline = None
    first = next(iter(AB_VARIANTS))
    chosen = [first, *[n for n in os.environ.get("AB", ",".join(AB_VARIANTS)).split(",") if n and n != first]]
    for name in chosen:
        variant(name)()
        eng = engine_for(ckpt, 1, prefix_cache_bytes=0)
        timed_run(eng, prompt(10_000), 130)  # captures the long bucket
        before = eng.stats()
        runs = [timed_run(eng, prompt(20), 129) for _ in range(2)]
        host = host_ms_per_step(before, eng.stats())
        replay = replay_ms(eng.scheduler.decoder, len(prompt(20).ids) + 128) if DEVICE == "cuda" else None
        eng.stop()
        baseline = baseline or runs[0]["ids"]
        res["variants"][name] = {
            "decode_tok_s_b1": max(128 / (r["times"][-1] - r["times"][0]) for r in runs),
            "same_ids_as_baseline": runs[0]["ids"] == baseline and runs[1]["ids"] == baseline,
            "replay_ms": replay,  # the step's CUDA graph alone, back to back
            **host,
            "engine_warmup_s": eng.warmup_s,  # compile cost of the variant (the inductor cache is shared)
        }
        save(args, "ab", res)
    AB_VARIANTS[first]()  # back to the baseline
