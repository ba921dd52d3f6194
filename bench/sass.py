"""The decode GEMVs' machine code, without a GPU: each kernel compiled by Triton for an NVIDIA target (Triton
ships ptxas and cuobjdump), then a table of what its main loop does per weight.

    PYTHONPATH=. .venv/bin/python bench/sass.py [--arch 90] [--out DIR]   # DIR keeps .sass / .ttgir

The integer arguments a real launch would mark as multiples of 16 (pointers, N, the row stride) get that hint
here too, since it decides the load widths. Columns: registers, the load widths (LDG.E.128 = 4 words), the
barriers and layout conversions in the loop, and the loop's instructions per weight (the loop: the longest
backward branch; weights per iteration: the tile a thread holds).
"""

from __future__ import annotations

import argparse
import re
import subprocess
from collections import Counter
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from pixdesk.model import int4_mma, int4_mma_rows, int4_triton, quant_triton

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
I4 = {"x_ptr": "*bf16", "w_ptr": "*u8", "s_ptr": "*bf16", "m_ptr": "*bf16", "y_ptr": "*fp32"}
# Int4Linear's group-major buffers (quant_ops.group_major): words 16 apart by row and 16 N apart by group,
# scales contiguous along rows (a stride of 1, which Triton specializes as a constant).
GM = {"SWN": "i32", "SWG": "i32", "SSN": "constexpr", "SSG": "i32"}
GM_HINTED = ("SWN", "SWG", "SSG")
MMA_FLAGS = {"BLOCK_N": "constexpr", "USE_PDL": "constexpr", "PREFETCH": "constexpr",
             "STAGES": "constexpr", "PACKED": "constexpr"}  # fmt: skip
KERNELS = {  # name: (jit function, signature, constexprs, args hinted as multiples of 16, weights a thread
    # holds per loop iteration, warps)
    "int4 one row": (
        int4_triton._gemv1.fn,
        {**I4, "N": "i32", "KW": "i32", "NG": "i32", "SPLIT_GROUPS": "i32",
         **GM, "G": "constexpr", "MB": "constexpr", "BLOCK_N": "constexpr"},
        {"G": 128, "MB": 1, "BLOCK_N": 128, "SSN": 1}, ("N", "KW", *GM_HINTED), 128 * 128 // 128, 4,
    ),
    "int4 8 rows": (
        int4_triton._gemv_rows.fn,
        {**I4, "M": "i32", "N": "i32", "KW": "i32", "NG": "i32", "SPLIT_GROUPS": "i32",
         **GM, "G": "constexpr", "MB": "constexpr", "BLOCK_N": "constexpr"},
        {"G": 128, "MB": 8, "BLOCK_N": 64, "SSN": 1}, ("N", "KW", *GM_HINTED), 64 * 128 // 128, 4,
    ),
    "int4 mma one row": (  # the register-prefetch loop, 4 warps (one of the autotuned forms)
        int4_mma._gemv1_mma.fn,
        {**I4, "N": "i32", "KW": "i32", "NG": "i32", "SPLIT_GROUPS": "i32", **GM, **MMA_FLAGS},
        {"BLOCK_N": 128, "SSN": 1, "USE_PDL": True, "PREFETCH": True, "STAGES": 1, "PACKED": False},
        ("N", "KW", *GM_HINTED), 128 * 128 // 128, 4,
    ),
    "int4 mma one row, pipelined": (  # Triton's cp.async pipeline, 4 warps
        int4_mma._gemv1_mma.fn,
        {**I4, "N": "i32", "KW": "i32", "NG": "i32", "SPLIT_GROUPS": "i32", **GM, **MMA_FLAGS},
        {"BLOCK_N": 128, "SSN": 1, "USE_PDL": True, "PREFETCH": False, "STAGES": 3, "PACKED": False},
        ("N", "KW", *GM_HINTED), 128 * 128 // 128, 4,
    ),
    "int4 mma 8 rows": (  # one mma column an x row (the inputs packed as int32 pairs), 4 warps
        int4_mma_rows._gemv_rows_mma.fn,
        {"xp_ptr": "*i32", **{k: t for k, t in I4.items() if k != "x_ptr"}, "M": "i32", "N": "i32", "KP": "i32",
         "KW": "i32", "NG": "i32", "SPLIT_GROUPS": "i32", **GM, "BLOCK_N": "constexpr", "USE_PDL": "constexpr", "STAGES": "constexpr",
         "PACKED": "constexpr"},
        {"BLOCK_N": 128, "SSN": 1, "USE_PDL": True, "STAGES": 1, "PACKED": False},
        ("N", "KP", "KW", *GM_HINTED), 128 * 128 // 128, 4,
    ),
    "int8 one row": (
        quant_triton._int8_gemv.fn,
        {"x_ptr": "*bf16", "w_ptr": "*i8", "s_ptr": "*fp32", "y_ptr": "*bf16", "M": "i32", "N": "i32",
         "K": "i32", "SPLIT_WORDS": "i32", "MB": "constexpr", "GATED": "constexpr", "BLOCK_N": "constexpr",
         "BLOCK_K": "constexpr"},
        {"MB": 1, "GATED": False, "BLOCK_N": 16, "BLOCK_K": 512}, ("N", "K", "SPLIT_WORDS"), 16 * 512 // 128, 4,
    ),
}  # fmt: skip
LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def compile_kernel(fn, signature: dict, constexprs: dict, hinted, arch: int, warps: int, **options):
    """Triton's compile of fn for an NVIDIA target; `options` adds compile options (maxnreg)."""
    names = list(signature)
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in names if a.endswith("_ptr") or a in hinted}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(
        src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": 3, **options}
    )


def sass_of(cubin: bytes, path: Path) -> str:
    path.write_bytes(cubin)
    return subprocess.run([str(BIN / "cuobjdump"), "-sass", str(path)], capture_output=True, text=True).stdout


def main_loop(sass: str) -> list[tuple[int, str]]:
    """(address, opcode) of the instructions inside the longest backward branch."""
    code = [(int(a, 16), op, rest) for a, op, rest in LINE.findall(sass)]
    best = (0, 0)
    for addr, op, rest in code:
        m = re.search(r"0x([0-9a-f]+)", rest) if op.startswith("BRA") else None
        if m and int(m.group(1), 16) < addr and addr - int(m.group(1), 16) > best[1] - best[0]:
            best = (int(m.group(1), 16), addr)
    return [(a, op) for a, op, _ in code if best[0] <= a <= best[1]]


def regs(path: Path) -> str:
    out = subprocess.run(
        [str(BIN / "cuobjdump"), "--dump-resource-usage", str(path)], capture_output=True, text=True
    )
    m = re.search(r"REG:(\d+)", out.stdout)
    return m.group(1) if m else "?"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--out", type=Path, default=Path("/tmp/pixdesk-sass"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    print(f"sm_{a.arch}, triton {triton.__version__}")
    print(
        "| kernel | regs | loads | loop barriers | layout conversions | loop instructions / weight | top opcodes |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, (fn, sig, consts, hinted, weights, warps) in KERNELS.items():
        c = compile_kernel(fn, sig, consts, hinted, a.arch, warps)
        stem = a.out / name.replace(" ", "_")
        sass = sass_of(c.asm["cubin"], stem.with_suffix(".cubin"))
        stem.with_suffix(".sass").write_text(sass)
        stem.with_suffix(".ttgir").write_text(c.asm["ttgir"])
        loads = Counter(op for _, op, _ in LINE.findall(sass) if op.startswith(("LDG", "LDGSTS")))
        loop = main_loop(sass)
        ops = Counter(op.split(".")[0] for _, op in loop)
        barriers = ops.pop("BAR", 0)
        top = ", ".join(f"{op} {n}" for op, n in ops.most_common(6))
        converts = c.asm["ttgir"].count("ttg.convert_layout")
        print(f"| {name} | {regs(stem.with_suffix('.cubin'))} | {dict(loads)} | {barriers} | {converts} | "
              f"{len(loop) / weights:.1f} | {top} |")  # fmt: skip


if __name__ == "__main__":
    main()
