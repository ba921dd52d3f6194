"""Two parts of the 4,183-token image prompt's prefill, timed alone on a GPU: scaled dot-product attention per
SDPA backend (the vision encoder's 4,096 patches with head_dim 64, bidirectional; the decoder's causal GQA with
head_dim 128), and SiLU x up on the vision encoder's (4,096, 4,096) activations in the forms Inductor makes.

    PYTHONPATH=. python3 bench/prefill_parts.py

Prints us a call (median of 20 after warm-up) and the attention's TFLOP/s.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}  # fmt: skip


def time_us(fn, repeat: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeat):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    return sorted(times)[len(times) // 2]


def attention_rows() -> None:
    cases = {  # name: (heads, kv heads, tokens, head_dim, causal)
        "vision 16x4096x64": (16, 16, 4096, 64, False),
        "decoder 32/8x4183x128 causal": (32, 8, 4183, 128, True),
    }
    for name, (h, hkv, t, d, causal) in cases.items():
        q = torch.randn(1, h, t, d, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(1, hkv, t, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        flops = 4 * h * d * (t * (t + 1) / 2 if causal else t * t)
        for backend, which in BACKENDS.items():
            try:
                with sdpa_kernel(which):
                    us = time_us(lambda q=q, k=k, v=v, c=causal, g=h != hkv: F.scaled_dot_product_attention(
                        q, k, v, is_causal=c, enable_gqa=g))
            except RuntimeError as exc:
                print(f"  {name:30s} {backend:10s} unavailable: {str(exc).splitlines()[0][:80]}")
                continue
            print(f"  {name:30s} {backend:10s} {us:8.1f} us  {flops / us / 1e6:6.0f} TFLOP/s")


def silu_rows() -> None:
    t, hidden = 4096, 4096
    gate_up = torch.randn(t, 2 * hidden, device="cuda", dtype=torch.bfloat16)
    gate, up = (torch.randn(t, hidden, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    moved = 3 * t * hidden * 2
    forms = {
        "eager, two tensors": lambda: F.silu(gate) * up,
        "compiled, two tensors": torch.compile(lambda g, u: F.silu(g) * u, dynamic=True),
        "compiled, one gate|up (chunk)": torch.compile(lambda gu: (lambda g, u: F.silu(g) * u)(*gu.chunk(2, -1)),
                                                       dynamic=True),  # fmt: skip
    }
    for name, fn in forms.items():
        args = (gate_up,) if "one" in name else (gate, up) if "compiled" in name else ()
        us = time_us(lambda fn=fn, args=args: fn(*args))
        print(f"  SiLU x up {name:32s} {us:8.1f} us  {moved / us / 1e6:5.2f} TB/s")


def main() -> None:
    print(torch.cuda.get_device_name(), torch.__version__)
    attention_rows()
    silu_rows()


if __name__ == "__main__":
    main()
