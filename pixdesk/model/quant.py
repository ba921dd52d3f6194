"""Weight-only int8 and int4 linears for the decoder: quantize, pack, fuse, swap into a model.

Formats (the canonical ones, also what the quantized cache stores):
- int8: per output channel, symmetric. `qweight` int8 (N, K), `scales` fp32 (N,); w = q * s.
  Worked example: a row with max |w| = 0.254 gets s = 0.002, so w = -0.1 is stored as q = -50.
- int4: groups of `group_size` along K, asymmetric: w = q * s + m with q in 0..15, s = (max - min) / 15 and
  m = min of the group; `scales` and `mins` bf16 (N, K/G). `qweight` uint8 (N, K/2) in the interleaved
  layout the decode kernels want: a group of G weights is G/8 little-endian int32 words, and nibble i of
  word w holds k = i * G/8 + w. Int4Linear keeps it as (N, K/G, G/2), and all three buffers group-major in
  memory (`quant_ops.group_major` says why), and the cache file in that order. For G = 128 (16 words):

      word 0: k = 0, 16, 32, ..., 112  (nibble 0 = bits 0..3 holds k = 0, nibble 7 = bits 28..31 k = 112)
      word 1: k = 1, 17, 33, ..., 113
      ...
      word 15: k = 15, 31, ..., 127

  so nibble i of words 0..15 multiplies inputs 16i..16i+15, one vector load (`quant_ops.pack_int4`).
  Group size 128: the scale and minimum cost 4 bytes per 128 weights (0.25 bits, 6% over 4 bits; 32 would
  cost 25%), the output cosine on Gaussian weights stays ~0.995 (bound 0.99), and every decoder input
  size (4096, 5120, 14336) is a multiple of it. On a GPU, after loading, scales and minimums are interleaved
  into one (K/G, N, 2) buffer (both stay (N, K/G) views of it; Int4Linear.interleave_scales): the decode
  GEMVs then load one 4-byte word for a row's pair.

The vision encoder, the adapter and the token embedding stay in the model's dtype. Rows are independent in
both formats, so fusing q|k|v or gate|up is a concatenation of the quantized parts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pixdesk.devices import free_device_bytes
from pixdesk.model import quant_ops
from pixdesk.model.quant_ops import pack_int4, unpack_int4  # noqa: F401  (part of this module's API)

INT4_GROUP = 128
MODES = ("none", "int8", "int4")


@dataclass(frozen=True)
class QuantSpec:
    mode: str  # "int8" | "int4"
    group_size: int = INT4_GROUP  # int4 only

    def for_inputs(self, in_sizes: list[int]) -> QuantSpec:
        """int4: the largest group size <= `group_size` (128, 64, 32, 16) that divides every input size."""
        if self.mode != "int4":
            return self
        for g in (128, 64, 32, 16):
            if g <= self.group_size and all(k % g == 0 for k in in_sizes):
                return QuantSpec("int4", g)
        raise ValueError(f"int4 needs linear input sizes that are multiples of 16; this model has {in_sizes}")

    def describe(self) -> dict:
        """What identifies the format (part of the quantized cache key)."""
        if self.mode == "int8":
            return {"mode": "int8", "granularity": "per-channel", "symmetric": True, "format": 1}
        return {"mode": "int4", "group_size": self.group_size, "symmetric": False, "format": 2}


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float -> (int8 (N, K), fp32 scales (N,)). Computed in fp32 on w's device."""
    wf = w.float()
    scales = (wf.abs().amax(dim=1) / 127).clamp(min=1e-12)  # (N,)
    q = torch.round(wf / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scales


def quantize_int4(
    w: torch.Tensor, group: int = INT4_GROUP
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, K) float -> (packed uint8 (N, K/2), bf16 scales (N, K/G), bf16 mins (N, K/G))."""
    N, K = w.shape
    if K % group:
        raise ValueError(f"int4: input size {K} is not a multiple of the group size {group}")
    wg = w.float().reshape(N, K // group, group)  # (N, K/G, G)
    lo, hi = wg.amin(-1), wg.amax(-1)
    scales = ((hi - lo) / 15).clamp(min=1e-8).to(torch.bfloat16)
    mins = lo.to(torch.bfloat16)
    # Round against the stored (bf16) scale and min so the kernels reproduce exactly what was chosen here.
    q = torch.round((wg - mins.float()[..., None]) / scales.float()[..., None]).clamp_(0, 15).to(torch.uint8)
    return pack_int4(q.reshape(N, K), group), scales, mins


def dequantize(module: nn.Module) -> torch.Tensor:
    """The float (N, K) weight a quantized linear stands for (fp32; for tests and checks)."""
    if isinstance(module, Int8Linear):
        return module.qweight.float() * module.scales.float()[:, None]
    m = module
    return quant_ops.dequantize_int4(m.qweight, m.scales, m.mins, m.group_size, torch.float32)


class Int8Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer(
            "qweight", torch.empty(out_features, in_features, dtype=torch.int8, device=device)
        )
        self.register_buffer("scales", torch.empty(out_features, dtype=torch.float32, device=device))

    @classmethod
    def from_float(cls, w: torch.Tensor) -> Int8Linear:
        m = cls(w.shape[1], w.shape[0], device="meta")
        m.qweight, m.scales = quantize_int8(w)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quant_ops.int8_linear(x, self.qweight, self.scales)

    def partials(self, x: torch.Tensor) -> torch.Tensor:
        """x (M, K) -> (S, M, N) partial products (quant_ops.linear_partials)."""
        if x.is_cuda:
            return quant_ops.int8_linear_op(x.contiguous(), self.qweight, self.scales)
        return self(x)[None]

    def gated(self, x: torch.Tensor) -> torch.Tensor | None:
        """For a gate|up weight: one row x -> silu(gate) * up in one kernel, or None (quant_ops)."""
        return quant_ops.int8_gated(x, self.qweight, self.scales)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


class Int4Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, group_size: int = INT4_GROUP, device=None):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        u8, bf16 = torch.uint8, torch.bfloat16
        # Stored group-major (quant_ops.group_major); Module.to keeps these strides.
        qweight = torch.empty(groups, out_features, group_size // 2, dtype=u8, device=device).transpose(0, 1)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", torch.empty(groups, out_features, dtype=bf16, device=device).t())
        self.register_buffer("mins", torch.empty(groups, out_features, dtype=bf16, device=device).t())
        self.cpu_pack: tuple[torch.Tensor, torch.Tensor] | None = None  # the CPU kernel's own layout
        self.cuda_pack: tuple[torch.Tensor, torch.Tensor] | None = None  # tinygemm's layout, replaces buffers

    @classmethod
    def from_float(cls, w: torch.Tensor, group_size: int = INT4_GROUP) -> Int4Linear:
        m = cls(w.shape[1], w.shape[0], group_size, device="meta")
        m.qweight, m.scales, m.mins = quant_ops.group_major(*quantize_int4(w, group_size))
        return m

    @staticmethod
    def stored(buffer: torch.Tensor) -> torch.Tensor:
        """A buffer as the quantized cache stores it, and back (the same swap of the first two dimensions):
        its memory order, (K/G, N, G/2) and (K/G, N), contiguous."""
        return buffer.transpose(0, 1)

    def put_buffer(self, name: str, value: torch.Tensor) -> None:
        """One buffer from the quantized cache (its stored form): a view, no copy."""
        self._buffers[name] = self.stored(value)

    def interleave_scales(self) -> None:
        """Scales and minimums as the two halves of one bf16x2 word a (row, group), stored group-major as
        (K/G, N, 2): both buffers become strided views of that one (the kernels take strides; the mma GEMVs
        see the pairing, quant_ops.interleaved_scales, and load one word for both). Same memory; after the
        cache is written (it stores the separate buffers)."""
        if quant_ops.interleaved_scales(self.scales, self.mins):
            return
        both = torch.stack([self.scales.t(), self.mins.t()], dim=-1)  # (K/G, N, 2)
        self._buffers["scales"], self._buffers["mins"] = both[..., 0].t(), both[..., 1].t()

    def add_tinygemm(self) -> None:
        """On CUDA: a second copy in torch's tinygemm layout, for decode (up to 16 rows).

        Measured on an H200 (bench/kernels.py, the decoder's 161 linears in one CUDA graph): tinygemm 3.6 ms
        per token at one row and 9.1 ms at 8 rows, our Triton int4 GEMV 4.4 and 17.1 ms. But tinygemm is slow
        on long prompts (3.2 s for the 4,183-token image prompt against 0.37 s for dequantize + cuBLAS), so
        prefill keeps reading the canonical buffers; `prepare_for_device` adds this copy only where memory
        allows it (a 12 GiB card runs the Triton kernel instead).
        """
        if self.cuda_pack is None:
            self.cuda_pack = quant_ops.int4_cuda_pack(self.qweight, self.scales, self.mins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cuda_pack is not None and x.numel() <= quant_ops.TINYGEMM_ROWS * self.in_features:
            return quant_ops.int4_linear_tinygemm(x, *self.cuda_pack, self.group_size, self.out_features)
        if x.device.type == "cpu":
            return self._forward_cpu(x)
        return quant_ops.int4_linear(x, self.qweight, self.scales, self.mins, self.group_size)

    def partials(self, x: torch.Tensor) -> torch.Tensor:
        """x (M, K) -> (S, M, N) partial products (quant_ops.linear_partials): on CUDA the decode GEMVs'
        K-split partials, which the decode step's add + RMSNorm and RoPE kernels sum (no sum kernel)."""
        if x.is_cuda and self.cuda_pack is None:
            return quant_ops.int4_linear_partials(
                x.contiguous(), self.qweight, self.scales, self.mins, self.group_size
            )
        return self(x)[None]

    def gated(self, x: torch.Tensor) -> torch.Tensor | None:
        """As a fused gate|up: one bf16 CUDA row -> silu(gate) * up (quant_ops.int4_gated), else None."""
        if self.cuda_pack is not None:
            return None
        return quant_ops.int4_gated(x, self.qweight, self.scales, self.mins, self.group_size)

    def qkv_rope(self, x, cos, sin, keys, values, positions, n_heads: int) -> torch.Tensor | None:
        """As a fused q|k|v: one row x, its rotation tables cos/sin (1, D/2) -> rotated q (1, H, D), with k
        and v written to the cache's only slot at positions[0] in the same kernel; or None where that
        kernel does not apply (quant_ops.int4_qkv_rope)."""
        if self.cuda_pack is not None:
            return None
        weight = (self.qweight, self.scales, self.mins, self.group_size)
        return quant_ops.int4_qkv_rope(x, *weight, cos, sin, keys, values, positions, n_heads)

    def _forward_cpu(self, x: torch.Tensor) -> torch.Tensor:
        """Decode rows through torch's CPU int4 kernel (bf16 activations, its own packed copy); prefill and
        group sizes it lacks (tiny test models) multiply by the dequantized weight (quant_ops says why)."""
        rows = x.numel() // self.in_features
        if rows > quant_ops.DECODE_ROWS or self.group_size not in quant_ops.CPU_INT4_GROUPS:
            return torch.nn.functional.linear(x, dequantize(self).to(x.dtype))
        if self.cpu_pack is None:
            self.cpu_pack = quant_ops.int4_cpu_pack(self.qweight, self.scales, self.mins, torch.bfloat16)
        xb = x.to(torch.bfloat16)
        return quant_ops.int4_linear_cpu(xb, *self.cpu_pack, self.group_size, self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, int4 group {self.group_size}"
        )


QuantLinear = (Int8Linear, Int4Linear)


QUANTIZE_ROWS = 4096  # rows per quantization pass: fp32 temporaries stay ~100 MB even for the LM head


def quantize_linear(w: torch.Tensor, spec: QuantSpec) -> nn.Module:
    """A float (N, K) weight -> its quantized linear, a block of rows at a time (rows are independent, and
    the LM head's fp32 temporaries in one pass would take ~8 GB: more than a 12 GiB card has left)."""
    parts = [
        Int8Linear.from_float(block) if spec.mode == "int8" else Int4Linear.from_float(block, spec.group_size)
        for block in w.split(QUANTIZE_ROWS)
    ]
    return parts[0] if len(parts) == 1 else concat_linears(parts)


def empty_linear(in_features: int, out_features: int, spec: QuantSpec) -> nn.Module:
    """A quantized linear on meta, to be filled from the quantized cache."""
    if spec.mode == "int8":
        return Int8Linear(in_features, out_features, device="meta")
    return Int4Linear(in_features, out_features, spec.group_size, device="meta")


def concat_linears(mods: list[nn.Module]) -> nn.Module:
    """One linear whose output is the concatenation of `mods`' outputs (fused q|k|v, gate|up)."""
    first = mods[0]
    if isinstance(first, nn.Linear):
        w = torch.cat([m.weight for m in mods]).detach()
        fused = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
        fused.weight = nn.Parameter(w, requires_grad=False)
        return fused
    out = sum(m.out_features for m in mods)
    if isinstance(first, Int8Linear):
        fused = Int8Linear(first.in_features, out, device="meta")
        fused.qweight = torch.cat([m.qweight for m in mods])
        fused.scales = torch.cat([m.scales for m in mods])
        return fused
    fused = Int4Linear(first.in_features, out, first.group_size, device="meta")
    for name in ("qweight", "scales", "mins"):  # joined along N in memory order: one copy, group-major
        stored = torch.cat([Int4Linear.stored(getattr(m, name)) for m in mods], dim=1)
        setattr(fused, name, Int4Linear.stored(stored))
    return fused


def decoder_input_sizes(model: nn.Module) -> list[int]:
    return sorted({model.get_submodule(n).in_features for n in decoder_linear_names(model)})


def decoder_linear_names(model: nn.Module) -> list[str]:
    """Qualified names of the linears that are quantized: every decoder projection and the LM head."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, *QuantLinear))]
    return [n for n in names if n.startswith("layers.") or n == "output"]


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def quantize_model(model: nn.Module, spec: QuantSpec, progress=None) -> nn.Module:
    """Replace every decoder linear (already loaded) with its quantized form, one at a time, freeing each
    float weight as soon as it is replaced (peak: the quantized model + one float weight + temporaries)."""
    names = decoder_linear_names(model)
    spec = spec.for_inputs(decoder_input_sizes(model))
    for i, name in enumerate(names):
        lin = model.get_submodule(name)
        set_module(model, name, quantize_linear(lin.weight.detach(), spec))
        del lin
        if progress:
            progress(i + 1, len(names))
    return model


def quantized_bytes(model: nn.Module) -> int:
    """Bytes a decode step reads from the quantized linears (weights, scales, minimums; the tinygemm copy
    where there is one, else the canonical buffers)."""
    total = 0
    for m in model.modules():
        if isinstance(m, QuantLinear):
            parts = getattr(m, "cuda_pack", None) or tuple(m.buffers(recurse=False))
            total += sum(t.numel() * t.element_size() for t in parts)
    return total


TINYGEMM_HEADROOM = 4 * 2**30  # free memory that must remain after the decode copies of int4 weights
# int4 decode on CUDA: "triton" (our kernels on the one canonical copy: int4_mma's tensor-core GEMV for one
# row, int4_triton's for 2..16) or "tinygemm" (torch's kernel for one row, on a second copy, where memory
# allows). The 161 linears of a 12B model at one row on an H200 (bench/kernels.py, session 9, one sitting):
# int4_mma 2.92 ms, tinygemm 3.56, int4_triton's one-row kernel 3.95. So the second copy (+6 GB) buys nothing.
INT4_DECODE = "triton"
# With "triton": each int4 linear's scales and minimums interleaved on the GPU after loading (one bf16x2 word
# a row and group, Int4Linear.interleave_scales), so the decode GEMVs load one 4-byte word for both where they
# loaded one for each. H200: gate|up 25.0 -> 24.1 us and down 13.9 -> 13.2 alone (bench/int4_smallloads.py),
# but only -8 us a b1 step in the engine (2.977 -> 2.969 ms, +0.3%; bench/NOTES.md, session 16).
INTERLEAVE_SCALES = True


def prepare_for_device(model: nn.Module) -> nn.Module:
    """After loading (and fusing), on a GPU: with INT4_DECODE = "triton" the int4 linears' scales and
    minimums interleaved (INTERLEAVE_SCALES); with "tinygemm" tinygemm copies for decode when the card has
    room for them plus TINYGEMM_HEADROOM (KV cache, activations), else decode uses the Triton GEMV."""
    int4 = [m for m in model.modules() if isinstance(m, Int4Linear) and m.qweight.is_cuda]
    if INT4_DECODE != "tinygemm":
        for m in int4 if INTERLEAVE_SCALES else ():
            m.interleave_scales()
        return model
    int4 = [m for m in int4 if m.cuda_pack is None and quant_ops.tinygemm_fits(m)]
    if not int4:
        return model
    extra = sum(m.qweight.numel() + 2 * m.scales.numel() * 2 for m in int4)
    free = free_device_bytes(int4[0].qweight.device)
    if free < extra + TINYGEMM_HEADROOM:
        return model
    for m in int4:
        m.add_tinygemm()
    return model
