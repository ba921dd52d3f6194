"""Stream-K for the one-row int4 mma GEMV, measured against the served kernel (40 distinct weights per decoder
shape in a CUDA graph with PDL; the GEMV alone, its partials' sum not included).

Nsight Compute on the served gate|up GEMV (session 16): 896 programs, 88 registers a thread, so 5 programs
an SM (660 slots): 1.36 waves, and the last 237 programs run on a GPU mostly idle. Stream-K launches as many
programs as fit at once (or a whole multiple of that), and gives each the same number of (row block, group)
tiles, contiguous in row-block order, so no program waits for a second wave: a program's range covers the end
of one row block and the start of the next (at most two segments while a program's tiles do not exceed a
row's groups), and it writes one fp32 partial row of BLOCK_N sums a segment.

    PYTHONPATH=. python3 bench/int4_streamk.py      # prints a table, writes $OUT/int4_streamk.json
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bench.int4_chains import SHAPES, checked_us, print_header, print_row, save, served_row, weights
from pixdesk.model import pdl
from pixdesk.model.int4_mma import _group, _load_bf16_as_words, _load_x
from pixdesk.model.int4_triton import int4_strides
from pixdesk.model.quant_triton import _ASM

SLOT_MULTIPLES = (1, 2, 3)  # programs = this x the programs resident at once
FORMS = [(w, s) for w in (4, 8) for s in (2, 3)]  # (warps, stages)


@triton.jit
def _segment(x_ptr, w_ptr, s_ptr, m_ptr, b, g_lo, g_hi, N, SWN, SWG, SSN, SSG, BLOCK_N: tl.constexpr,
             STAGES: tl.constexpr):  # fmt: skip
    rows = tl.minimum(b * BLOCK_N + tl.arange(0, BLOCK_N), N - 1)
    rw = tl.arange(0, 16)
    w_rows = w_ptr.to(tl.pointer_type(tl.int32)) + rows[:, None] * SWN + rw[None, :]
    sm_rows = rows * SSN
    acc = tl.zeros((BLOCK_N, 16), tl.float32)
    for i in tl.range(0, g_hi - g_lo, num_stages=STAGES):
        g = g_lo + i
        sg = sm_rows + g * SSG
        s0, m0 = _load_bf16_as_words(s_ptr, sg), _load_bf16_as_words(m_ptr, sg)
        xp0, xp1, xp2, xp3 = _load_x(x_ptr, rw, g)
        acc = _group(tl.load(w_rows + g * SWG), xp0, xp1, xp2, xp3, s0, m0, acc)
    out = tl.sum(acc, axis=1)
    if _ASM:
        out = out * 0.25
    return out


@triton.jit
def _gemv1_streamk(x_ptr, w_ptr, s_ptr, m_ptr, y_ptr, N, NG, TILES, P, SWN, SWG, SSN, SSG,
                   BLOCK_N: tl.constexpr, STAGES: tl.constexpr, USE_PDL: tl.constexpr):  # fmt: skip
    """Program p sums tiles [p TILES / P, (p + 1) TILES / P) of the (row block, group) order; y[p, 0] is
    its first segment's partial row, y[p, 1] its second's (when it reaches into the next row block)."""
    p = tl.program_id(0)
    t0 = (p * TILES) // P
    t1 = ((p + 1) * TILES) // P
    b = t0 // NG
    g_end = tl.minimum(NG, t1 - b * NG)
    pdl.wait(USE_PDL)
    pdl.release(USE_PDL)
    r = tl.arange(0, BLOCK_N)
    out = _segment(x_ptr, w_ptr, s_ptr, m_ptr, b, t0 - b * NG, g_end, N, SWN, SWG, SSN, SSG, BLOCK_N, STAGES)
    tl.store(y_ptr + (2 * p) * BLOCK_N + r, out)
    if t1 > (b + 1) * NG:
        out = _segment(x_ptr, w_ptr, s_ptr, m_ptr, b + 1, 0, t1 - (b + 1) * NG, N, SWN, SWG, SSN, SSG, BLOCK_N,
                       STAGES)  # fmt: skip
        tl.store(y_ptr + (2 * p + 1) * BLOCK_N + r, out)


def resident(x, lin, warps: int, stages: int) -> int:
    """Programs an SM holds at once for this form, from the compiled kernel's registers and shared memory."""
    kernel = _launch(x, lin, 132, warps, stages)[1]
    regs = -(-kernel.n_regs // 8) * 8
    by_regs = 65536 // (regs * 32 * warps)
    by_smem = (227 * 1024) // (kernel.metadata.shared + 1024)
    return max(1, min(by_regs, by_smem, 64 // warps, 32))


def _launch(x, lin, P: int, warps: int, stages: int):
    N, NG = lin.qweight.shape[0], lin.scales.shape[1]
    tiles = triton.cdiv(N, 128) * NG
    y = torch.empty(P, 2, 128, dtype=torch.float32, device=x.device)
    use_pdl = pdl.enabled(x.device)
    kernel = _gemv1_streamk[(P,)](x, lin.qweight, lin.scales, lin.mins, y, N, NG, tiles, P,
                                  *int4_strides(lin.qweight, lin.scales), BLOCK_N=128, STAGES=stages,
                                  USE_PDL=use_pdl, num_warps=warps, **pdl.launch(use_pdl))  # fmt: skip
    return y, kernel


def streamk(x, lin, P: int, warps: int, stages: int) -> torch.Tensor:
    return _launch(x, lin, P, warps, stages)[0]


def reduce_streamk(y, N: int, NG: int, P: int) -> torch.Tensor:
    """The partials' sum per row (host-side bookkeeping; a check, not the served reduction)."""
    blocks = triton.cdiv(N, 128)
    out = torch.zeros(blocks, 128, dtype=torch.float32, device=y.device)
    tiles = blocks * NG
    for p in range(P):
        t0, t1 = p * tiles // P, (p + 1) * tiles // P
        b = t0 // NG
        out[b] += y[p, 0]
        if t1 > (b + 1) * NG:
            out[b + 1] += y[p, 1]
    return out.reshape(-1)[:N]


def shape_row(n: int, k: int, cols: list, resident_at: dict) -> dict:
    """us a call of the served GEMV and of each stream-K form, for 40 distinct (N, K) weights; each form's
    programs an SM go to resident_at."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    lins, x = weights(n, k)
    row, ref = served_row(x, lins)
    NG = k // 128
    for m, w, s in cols:
        P = m * resident(x, lins[0], w, s) * sms
        if triton.cdiv(n, 128) * NG // P + 1 > NG:
            row[f"{m}x w{w} s{s}"] = "spans 3 blocks"
            continue
        resident_at[f"w{w} s{s}"] = P // m // sms
        call = lambda i, P=P, w=w, s=s: streamk(x, lins[i], P, w, s)  # noqa: E731
        total = lambda y, P=P: reduce_streamk(y, n, NG, P)  # noqa: E731
        row[f"{m}x w{w} s{s}"] = checked_us(call, len(lins), total, ref, 1e-2)
    return row


def main() -> None:
    res = {"resident": {}}
    cols = [(m, w, s) for m in SLOT_MULTIPLES for w, s in FORMS]
    print_header([f"{m}x slots w{w} s{s}" for m, w, s in cols])
    for name, (n, k) in SHAPES.items():
        res[name] = shape_row(n, k, cols, res["resident"])
        print_row(name, res[name])
        torch.cuda.empty_cache()
    save(res, "int4_streamk.json")


if __name__ == "__main__":
    main()
