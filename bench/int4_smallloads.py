"""The one-row int4 mma GEMV's small per-group loads, restructured, against the served kernel (40 distinct
weights per decoder shape in a CUDA graph with PDL, us a call; each form checked against the served sums).

bench/int4_forms.py (session 16): without its per-group input, scale and minimum loads the served GEMV takes
gate|up 24.9 -> 22.2 us and the LM head 102 -> 90.5. Per group a thread issues 4 16-byte cp.async for the
weights but 8 8-byte ones for the inputs (then pairs them: PRMT) and 8 4-byte ones for 4 rows' scales and
minimums. Two restructurings, alone and together, in a copy of the served pipelined loop:

    x_pairs     the inputs given pre-paired: xp[64 g + 16 j + w] = (x[128 g + 16 j + w], x[128 g + 16 (j + 4) + w])
                as one int32 (what _load_x builds each group), so 4 16-byte loads a group and no pairing;
                in the engine the kernel producing x would write this form
    packed_sm   scale and minimum of a (row, group) as one bf16x2 word, [groups, rows]: half the loads
    both

    PYTHONPATH=. python3 bench/int4_smallloads.py    # prints a table, writes $OUT/int4_smallloads.json
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bench.int4_chains import SHAPES, checked_us, print_header, print_row, save, served_row, weights
from pixdesk.model import pdl
from pixdesk.model.int4_mma import _group, _load_bf16_as_words, _load_x
from pixdesk.model.int4_triton import int4_strides, splits
from pixdesk.model.quant_triton import _ASM

FORMS = {"copy": (False, False), "x_pairs": (True, False), "packed_sm": (False, True), "both": (True, True)}
CONFIGS = ((4, 3), (4, 4), (8, 3))  # (warps, stages)


@triton.jit
def _load_x_pairs(xp_ptr, rw, g):
    base = xp_ptr + g * 64 + rw
    return tl.load(base), tl.load(base + 16), tl.load(base + 32), tl.load(base + 48)


@triton.jit
def _gemv1_small(x_ptr, xp_ptr, w_ptr, s_ptr, m_ptr, smp_ptr, y_ptr, N, NG, SPLIT_GROUPS, SWN, SWG, SSN, SSG,
                 BLOCK_N: tl.constexpr, STAGES: tl.constexpr, X_PAIRS: tl.constexpr,
                 PACKED_SM: tl.constexpr, USE_PDL: tl.constexpr):  # fmt: skip
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.minimum(rn, N - 1)
    rw = tl.arange(0, 16)
    g_lo = tl.program_id(1) * SPLIT_GROUPS
    g_hi = tl.minimum(g_lo + SPLIT_GROUPS, NG)
    w_rows = w_ptr.to(tl.pointer_type(tl.int32)) + rows[:, None] * SWN + rw[None, :]
    sm_rows = rows * SSN
    acc = tl.zeros((BLOCK_N, 16), tl.float32)
    pdl.wait(USE_PDL)
    pdl.release(USE_PDL)
    for i in tl.range(0, g_hi - g_lo, num_stages=STAGES):
        g = g_lo + i
        if PACKED_SM:
            word = tl.load(smp_ptr + g * N + rows)
            s0 = (word << 16).to(tl.float32, bitcast=True)
            m0 = (word & -65536).to(tl.float32, bitcast=True)
        else:
            sg = sm_rows + g * SSG
            s0, m0 = _load_bf16_as_words(s_ptr, sg), _load_bf16_as_words(m_ptr, sg)
        if X_PAIRS:
            xp0, xp1, xp2, xp3 = _load_x_pairs(xp_ptr, rw, g)
        else:
            xp0, xp1, xp2, xp3 = _load_x(x_ptr, rw, g)
        acc = _group(tl.load(w_rows + g * SWG), xp0, xp1, xp2, xp3, s0, m0, acc)
    out = tl.sum(acc, axis=1)
    if _ASM:
        out = out * 0.25
    tl.store(y_ptr + tl.program_id(1) * N + rn, out.to(y_ptr.dtype.element_ty), mask=rn < N)


def paired_inputs(x: torch.Tensor) -> torch.Tensor:
    """x (1, K) bf16 -> (K / 2,) int32: per group of 128, pair j of word w is (x[16 j + w], x[16 (j + 4) + w])."""
    bits = x.reshape(-1, 8, 16).view(torch.int16).to(torch.int32) & 0xFFFF  # (groups, 8 vectors, 16)
    return (bits[:, :4] | (bits[:, 4:] << 16)).reshape(-1).contiguous()


def packed_scales(lin) -> torch.Tensor:
    """(groups, N) int32: a row's scale in the low half, its minimum in the high half."""
    s = lin.scales.t().contiguous().view(torch.int16).to(torch.int64) & 0xFFFF
    m = lin.mins.t().contiguous().view(torch.int16).to(torch.int64) & 0xFFFF
    return (s | (m << 16)).to(torch.int32).contiguous()


def gemv(x, xp, lin, smp, form: str, warps: int, stages: int) -> torch.Tensor:
    K, N = x.shape[1], lin.qweight.shape[0]
    S = splits(N, K, 128, 1, x.device)
    y = torch.empty(S, 1, N, dtype=torch.float32 if S > 1 else x.dtype, device=x.device)
    NG = K // 128
    use_pdl = pdl.enabled(x.device)
    x_pairs, packed = FORMS[form]
    _gemv1_small[(triton.cdiv(N, 128), S)](
        x, xp, lin.qweight, lin.scales, lin.mins, smp, y, N, NG, triton.cdiv(NG, S),
        *int4_strides(lin.qweight, lin.scales), BLOCK_N=128, STAGES=stages, X_PAIRS=x_pairs, PACKED_SM=packed,
        USE_PDL=use_pdl, num_warps=warps, **pdl.launch(use_pdl),
    )  # fmt: skip
    return y


def shape_row(n: int, k: int, cols: list) -> dict:
    """us a call of the served GEMV and of each form, for 40 distinct (N, K) weights."""
    lins, x = weights(n, k)
    smps = [packed_scales(m) for m in lins]
    xp = paired_inputs(x)
    row, ref = served_row(x, lins)
    for f, w, s in cols:
        call = lambda i, f=f, w=w, s=s: gemv(x, xp, lins[i], smps[i], f, w, s)  # noqa: E731
        row[f"{f} w{w} s{s}"] = checked_us(call, len(lins), lambda y: y.sum(0), ref, 1e-2)
    return row


def main() -> None:
    res = {}
    cols = [(f, w, s) for f in FORMS for w, s in CONFIGS]
    print_header([f"{f} w{w} s{s}" for f, w, s in cols])
    for name, (n, k) in SHAPES.items():
        res[name] = shape_row(n, k, cols)
        print_row(name, res[name])
        torch.cuda.empty_cache()
    save(res, "int4_smallloads.json")


if __name__ == "__main__":
    main()
