"""The int4 decode GEMV's machine code, compiled for sm_90 without a GPU (bench/sass.py): the properties its
speed rests on, found by reading the SASS in session 5 (bench/NOTES.md), kept from regressing."""

from __future__ import annotations

from collections import Counter

import pytest

pytest.importorskip("triton")


def _loop(name: str, tmp_path):
    from bench import sass

    fn, sig, consts, hinted, weights, warps = sass.KERNELS[name]
    compiled = sass.compile_kernel(fn, sig, consts, hinted, 90, warps)
    return sass.main_loop(sass.sass_of(compiled.asm["cubin"], tmp_path / "k.cubin")), weights


def test_int4_one_row_loop_reads_128_bits_and_spends_one_lop3_a_weight(tmp_path):
    loop, weights = _loop("int4 one row", tmp_path)
    ops = Counter(op for _, op in loop)
    assert ops["LDG.E.128"] >= 1  # the row stride passed in words: Triton proves 16-byte alignment
    lop3 = sum(n for op, n in ops.items() if op.startswith("LOP3"))
    assert lop3 <= 1.1 * weights  # one lop3.b32 a nibble (ptxas splits `(w & a) | b` into two)
    assert len(loop) / weights < 6  # ~5 (1e89f79's kernel: ~9)


def test_int4_rows_loop_multiplies_on_the_tensor_cores_with_pipelined_loads(tmp_path):
    loop, weights = _loop("int4 8 rows", tmp_path)
    ops = Counter(op.split(".")[0] for _, op in loop)
    assert ops["HMMA"] >= 1 and ops["LDGSTS"] >= 1
    assert len(loop) / weights < 9  # ~7 (the FMA kernel it replaced: ~22 at 8 rows)
