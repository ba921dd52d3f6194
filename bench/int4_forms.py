"""What bounds the one-row int4 mma GEMV (model/int4_mma.py): the same kernel with parts of its per-group PTX
taken out, timed as the decode step runs it (40 distinct weights per decoder shape in a CUDA graph, the
pinned configs and splits). The cut forms compute wrong sums; they exist to time, never to serve:

    full       the kernel as it serves
    no_x       without the second mma chain (A = ones: X, the inputs' sum a group, for the minimums)
    no_int     without the integer work that turns nibbles into bf16 pairs (the words go to the mma as
               they are)
    loads      neither mma nor integer work: the words and inputs are XOR-ed into one value a call, so
               the loads stay (the memory-side floor of the kernel's access pattern)
    no_small   the full arithmetic, but without the small loads of each group: the inputs, scales and
               minimums are made from the group index instead (the weight tiles alone are read)
    words      `loads` without the small loads: the weight tiles alone, XOR-ed

Each form runs in its own process (the PTX is a constant the kernel is compiled with).

    PYTHONPATH=. python3 bench/int4_forms.py            # prints a table, writes $OUT/int4_forms.json
"""

from __future__ import annotations

import json
import subprocess
import sys

FORMS = ("full", "no_x", "no_int", "loads", "no_small", "words")


def cut(asm: str, form: str) -> str:
    """The group PTX of int4_mma with `form`'s parts removed."""
    lines = asm.split("\n")
    if form == "no_x":
        return "\n".join(ln for ln in lines if "{one, one, one, one}" not in ln)
    if form == "no_int":
        out = []
        for ln in lines:
            if ln.startswith("shr.u32 t,"):
                continue
            if ln.startswith("lop3.b32 a"):
                dst, src = ln.split()[1].rstrip(","), ln.split()[2].rstrip(",")
                src = "t" if src == "t" else src
                out.append(f"mov.b32 {dst}, {src};" if src != "t" else f"mov.b32 {dst}, 0;")
                continue
            out.append(ln)
        return "\n".join(out)
    if form == "loads":
        keep = [ln for ln in lines if not (ln.startswith(("lop3", "shr", "mma")))]
        mix = ["xor.b32 t, $8, $9;"] + [f"xor.b32 t, t, ${i};" for i in range(10, 48)]
        mix += ["and.b32 t, t, 1;", "cvt.rn.f32.u32 d0, t;"]
        at = next(i for i, ln in enumerate(keep) if ln.startswith("add.f32"))
        return "\n".join(keep[:at] + mix + keep[at:])
    return asm


def _without_small_loads(int4_mma) -> None:
    """Replaces the group's input and scale loads of the pipelined loop with values made from the group
    index (before the first compile: Triton resolves the callees through the module's globals)."""
    import triton
    import triton.language as tl

    @triton.jit
    def no_x(x_ptr, rw, g):
        z = rw * 0 + g
        return z, z + 1, z + 2, z + 3

    @triton.jit
    def no_sm_words(ptr, idx):
        return (idx + 1).to(tl.float32)

    int4_mma._load_x, int4_mma._load_bf16_as_words = no_x, no_sm_words


def run_form(form: str) -> dict:
    import torch
    import triton.language as tl

    from pixdesk.model import int4_mma

    asm_form = {"no_small": "full", "words": "loads"}.get(form, form)
    int4_mma._MMA_GROUP = tl.constexpr(cut(int4_mma._mma_group_asm(), asm_form))  # before the first compile
    if form in ("no_small", "words"):
        _without_small_loads(int4_mma)
    from bench.int4_chains import SHAPES, chain_us, served, weights

    res = {}
    for name, (n, k) in SHAPES.items():
        lins, x = weights(n, k)
        us = chain_us(lambda i, x=x, lins=lins: served(x, lins[i]), len(lins))
        lin = lins[0]
        nbytes = lin.qweight.numel() * lin.qweight.element_size() + 2 * lin.scales.numel() * 2
        res[name] = {"us": us, "TBps": nbytes / us / 1e6}
        del lins, lin
        torch.cuda.empty_cache()
    return res


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--form":
        print(json.dumps(run_form(sys.argv[2])))
        return
    table = {}
    for form in FORMS:
        proc = subprocess.run([sys.executable, __file__, "--form", form], capture_output=True, text=True)
        if proc.returncode:
            print(f"{form}: failed\n{proc.stderr[-3000:]}", flush=True)
            continue
        table[form] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{form}: " + ", ".join(f"{name} {v['us']:.2f} us ({v['TBps']:.2f} TB/s)"
                                       for name, v in table[form].items()), flush=True)  # fmt: skip
    from bench.int4_chains import save

    save(table, "int4_forms.json")


if __name__ == "__main__":
    main()
