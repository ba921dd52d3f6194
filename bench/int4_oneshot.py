"""A one-shot form of the one-row int4 mma GEMV against the served one, timed as the decode step runs them
(40 distinct weights per decoder shape in a CUDA graph with PDL), and checked against it.

bench/read_ceiling.py found a plain streaming read of gate|up's 78 MB at 18.5 us in such a chain (4.2 TB/s:
~9,500 programs of 8 KB each, one load a program), the served GEMV at 25.0 us, and the GEMV with its
arithmetic cut out (bench/int4_forms.py `loads`) at 25.9: its loads, not its arithmetic, are slow. The served
GEMV gives each program a K split of 5..10 groups in a cp.async pipeline (896 programs for gate|up, ~5
resident on an SM by registers: 1.36 waves). The one-shot form gives each program G groups of 128 rows,
issues all of their weight loads at once (before the PDL wait when EARLY: no kernel writes weights), then
the inputs, then the group sums; many short programs, like the streaming read.

    PYTHONPATH=. python3 bench/int4_oneshot.py      # prints a table, writes $OUT/int4_oneshot.json
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bench.int4_chains import SHAPES, checked_us, print_header, print_row, save, served_row, weights
from pixdesk.model import pdl
from pixdesk.model.int4_mma import _group, _load_sm, _load_x
from pixdesk.model.int4_triton import int4_strides
from pixdesk.model.quant_triton import _ASM

FORMS = [(g, w, e) for g in (1, 2, 4) for w in (4, 8) for e in (False, True)]  # (groups a program, warps, EARLY)


@triton.jit
def _words(w_rows, g, SWG):
    return tl.load(w_rows + g * SWG)


@triton.jit
def _sum_group(x_ptr, s_ptr, m_ptr, sm_rows, rw, g, word, SSG, acc):
    s, m = _load_sm(s_ptr, m_ptr, sm_rows, g * SSG, False)
    xp0, xp1, xp2, xp3 = _load_x(x_ptr, rw, g)
    return _group(word, xp0, xp1, xp2, xp3, s, m, acc)


@triton.jit
def _gemv1_oneshot(x_ptr, w_ptr, s_ptr, m_ptr, y_ptr, N, SWN, SWG, SSN, SSG, BLOCK_N: tl.constexpr,
                   G: tl.constexpr, EARLY: tl.constexpr, USE_PDL: tl.constexpr):  # fmt: skip
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.minimum(rn, N - 1)
    rw = tl.arange(0, 16)
    w_rows = w_ptr.to(tl.pointer_type(tl.int32)) + rows[:, None] * SWN + rw[None, :]
    sm_rows = rows * SSN
    g0 = tl.program_id(1) * G
    if not EARLY:
        pdl.wait(USE_PDL)
    w0 = _words(w_rows, g0, SWG)
    if G >= 2:
        w1 = _words(w_rows, g0 + 1, SWG)
    if G >= 4:
        w2 = _words(w_rows, g0 + 2, SWG)
        w3 = _words(w_rows, g0 + 3, SWG)
    if EARLY:
        pdl.wait(USE_PDL)
    pdl.release(USE_PDL)
    acc = tl.zeros((BLOCK_N, 16), tl.float32)
    acc = _sum_group(x_ptr, s_ptr, m_ptr, sm_rows, rw, g0, w0, SSG, acc)
    if G >= 2:
        acc = _sum_group(x_ptr, s_ptr, m_ptr, sm_rows, rw, g0 + 1, w1, SSG, acc)
    if G >= 4:
        acc = _sum_group(x_ptr, s_ptr, m_ptr, sm_rows, rw, g0 + 2, w2, SSG, acc)
        acc = _sum_group(x_ptr, s_ptr, m_ptr, sm_rows, rw, g0 + 3, w3, SSG, acc)
    out = tl.sum(acc, axis=1)
    if _ASM:
        out = out * 0.25  # each lane of a quad added the whole group's sums
    tl.store(y_ptr + tl.program_id(1) * N + rn, out, mask=rn < N)


def oneshot(x, lin, G: int, warps: int, early: bool) -> torch.Tensor:
    N, NG = lin.qweight.shape[0], lin.scales.shape[1]
    S = NG // G
    y = torch.empty(S, 1, N, dtype=torch.float32, device=x.device)
    use_pdl = pdl.enabled(x.device)
    _gemv1_oneshot[(triton.cdiv(N, 128), S)](
        x, lin.qweight, lin.scales, lin.mins, y, N, *int4_strides(lin.qweight, lin.scales), BLOCK_N=128, G=G,
        EARLY=early, USE_PDL=use_pdl, num_warps=warps, **pdl.launch(use_pdl),
    )  # fmt: skip
    return y


def shape_row(n: int, k: int) -> dict:
    """us a call of the served GEMV and of each one-shot form, for 40 distinct (N, K) weights."""
    lins, x = weights(n, k)
    row, ref = served_row(x, lins)
    for g, w, e in FORMS:
        call = lambda i, g=g, w=w, e=e: oneshot(x, lins[i], g, w, e)  # noqa: E731
        row[f"G{g} w{w} e{int(e)}"] = checked_us(call, len(lins), lambda y: y.sum(0), ref, 1e-2)
    return row


def main() -> None:
    res = {}
    print_header([f"G{g} w{w}{' early' if e else ''}" for g, w, e in FORMS])
    for name, (n, k) in SHAPES.items():
        res[name] = shape_row(n, k)
        print_row(name, res[name])
        torch.cuda.empty_cache()
    save(res, "int4_oneshot.json")


if __name__ == "__main__":
    main()
