"""The int4 and int8 decode GEMVs' machine code, compiled for sm_90 without a GPU (bench/sass.py): the
properties their speed rests on, found by reading the SASS (bench/NOTES.md, sessions 5 and 8), kept from
regressing."""

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


def test_int8_one_row_loop_turns_a_byte_into_a_float_with_one_prmt(tmp_path):
    loop, weights = _loop("int8 one row", tmp_path)
    ops = Counter(op.split(".")[0] for _, op in loop)
    assert ops["LDG"] >= 1 and "I2F" not in ops  # no int-to-float conversions (a quarter of the FMA rate)
    assert ops["PRMT"] <= 1.1 * weights and ops["LOP3"] <= 0.3 * weights  # one PRMT a byte, one XOR a word
    assert len(loop) / weights < 4.6  # 4.2 (the shift-and-mask form: 5.2)


def test_int4_mma_loop_turns_two_nibbles_into_one_register_and_multiplies_on_the_tensor_cores(tmp_path):
    loop, weights = _loop("int4 mma one row", tmp_path)
    ops = Counter(op.split(".")[0] for _, op in loop)
    assert ops["HMMA"] >= 1 and "BAR" not in ops  # the blocked tile is the A fragment: no shared memory
    assert ops["LOP3"] <= 0.7 * weights  # one LOP3 a nibble pair (plus the inputs' pairing)
    assert len(loop) / weights < 2.2  # 1.9 (int4_triton's one-row FMA kernel: 5.0)


def test_int4_mma_pipelined_loop_copies_words_inputs_and_scales_asynchronously(tmp_path):
    loop, weights = _loop("int4 mma one row, pipelined", tmp_path)
    ops = Counter(op for _, op in loop)
    assert ops["LDGSTS.E.BYPASS.128"] >= 1 and ops["LDGSTS.E"] >= 1  # words, and the scale words
    assert not [op for op in ops if op.startswith("LDG.")]  # nothing left synchronous


def test_int4_mma_rows_keeps_the_weight_tile_in_the_a_fragment_layout(tmp_path):
    """The rows kernel's words, input pairs and accumulators share one blocked layout, a lane 4 words of a
    row in 8 x 4 lanes: the layout the inline mma reads as its A and B fragments. (Inputs loaded as bf16
    once pulled every tile to [1, 8] x [16, 2]: wrong sums on the GPU, right ones in the interpreter.)"""
    import re

    from bench import sass

    fn, sig, consts, hinted, weights, warps = sass.KERNELS["int4 mma 8 rows"]
    for stages in (1, 3):
        ttgir = sass.compile_kernel(fn, sig, {**consts, "STAGES": stages}, hinted, 90, warps).asm["ttgir"]
        layouts = dict(re.findall(r"^(#\w+) = (#ttg\.blocked<\{.*\}>)", ttgir, re.M))
        load = r"(?:tt\.load|async_copy_global_to_local|local_load)"
        loads = load + r"[^\n]*tensor<128x16x(?:!tt\.ptr<)?i32>?, (#\w+)>"
        tiles = set(re.findall(loads, ttgir))  # the words' and the input pairs' loads
        fragment = "sizePerThread = [1, 4], threadsPerWarp = [8, 4]"
        used = {layouts.get(t, t) for t in tiles if "blocked" in layouts.get(t, "")}
        assert used and all(fragment in u for u in used), (stages, used)
    loop = sass.main_loop(sass.sass_of(sass.compile_kernel(fn, sig, consts, hinted, 90, warps).asm["cubin"],
                                       tmp_path / "k.cubin"))  # fmt: skip
    ops = Counter(op.split(".")[0] for _, op in loop)
    assert ops["HMMA"] >= 1 and "BAR" not in ops


def test_every_pinned_int4_config_compiles_for_sm90_without_spills(tmp_path):
    """The one-row mma GEMV at each pinned (warps, prefetch, stages) and register budget of the 12B shapes, on
    interleaved scales: no local-memory spills (caps under the natural count spilled inside the loop and ran
    10-40% slower on an H200), and q|k|v's budget is taken (ptxas left alone picks 60 registers and a slower
    schedule: bench/NOTES.md, session 17)."""
    from bench import sass
    from pixdesk.model import int4_mma

    fn, sig, consts, hinted, _, _ = sass.KERNELS["int4 mma one row"]
    used = {}
    for shape, (warps, prefetch, stages) in int4_mma.PINNED.items():
        cap = {"maxnreg": int4_mma.MAXNREG[shape]} if shape in int4_mma.MAXNREG else {}
        flags = {**consts, "PREFETCH": prefetch, "STAGES": stages, "PACKED": True}
        cubin = sass.compile_kernel(fn, sig, flags, hinted, 90, warps, **cap).asm["cubin"]
        code = sass.sass_of(cubin, tmp_path / "k.cubin")
        assert "STL" not in code and "LDL" not in code, (shape, cap)
        used[shape] = int(sass.regs(tmp_path / "k.cubin"))
    assert used[(6144, 5120)] == int4_mma.MAXNREG[(6144, 5120)]
