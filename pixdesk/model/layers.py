"""Building blocks shared by the vision and text towers. Layers take explicit dimensions.

Attention is split in two: the module projects and rotates q/k/v, and an `attend` callable supplied by
the caller does the softmax part. The vision tower passes a block-diagonal bidirectional attend; the
decoder passes one that writes to and reads from the engine's KV cache.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pixdesk.model.quant import concat_linears
from pixdesk.model.quant_ops import silu_gate_up
from pixdesk.model.rope import apply_rope

# (q, k, v) each (B, T, H|Hkv, D) -> (B, T, H, D)
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# Causal prefill: SDPA reads each KV head for its query group (enable_gqa, torch >= 2.5) instead of K and V
# being copied per group first. On an H200 the 4,183-token image prefill took 157.8 ms with it, 159.9 ms
# without (bench/profile_prefill.py, same logits error vs eager); and no 4x copies of K and V are allocated.
NATIVE_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalize in fp32, cast back, then scale (mistral-inference and HF agree on this order).
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, head_dim: int):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.wq = nn.Linear(dim, n_heads * head_dim, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * head_dim, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * head_dim, bias=False)
        self.wo = nn.Linear(n_heads * head_dim, dim, bias=False)

    def fuse(self) -> None:
        """One (q|k|v) projection instead of three: one weight read and one launch per decode step."""
        self.wqkv = concat_linears([self.wq, self.wk, self.wv])
        del self.wq, self.wk, self.wv

    def project(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, dim) -> rotated q (B, T, H, D), rotated k and v (B, T, Hkv, D)."""
        B, T, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        if hasattr(self, "wqkv"):
            q, k, v = self.wqkv(x).split([H * D, Hkv * D, Hkv * D], dim=-1)
        else:
            q, k, v = self.wq(x), self.wk(x), self.wv(x)
        q = q.view(B, T, H, D)
        k = k.view(B, T, Hkv, D)
        v = v.view(B, T, Hkv, D)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def output(self, out: torch.Tensor) -> torch.Tensor:
        """Attention output (B, T, H, D) -> (B, T, dim)."""
        B, T = out.shape[:2]
        return self.wo(out.reshape(B, T, self.n_heads * self.head_dim))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend) -> torch.Tensor:
        return self.output(attend(*self.project(x, cos, sin)))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)  # gate
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)  # down
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)  # up

    def fuse(self) -> None:
        """One (gate|up) projection instead of two."""
        self.w13 = concat_linears([self.w1, self.w3])
        del self.w1, self.w3

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., dim) -> silu(gate) * up (..., hidden_dim); one kernel for one row of int8 on CUDA."""
        if hasattr(self, "w13"):
            return silu_gate_up(self.w13, x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)
        return F.silu(self.w1(x)) * self.w3(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.hidden(x))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, head_dim: int, hidden_dim: int, eps: float):
        super().__init__()
        self.attention_norm = RMSNorm(dim, eps)
        self.attention = Attention(dim, n_heads, n_kv_heads, head_dim)
        self.ffn_norm = RMSNorm(dim, eps)
        self.feed_forward = FeedForward(dim, hidden_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend) -> torch.Tensor:
        return self.finish(x, attend(*self.project(x, cos, sin)))

    # The block in two halves around attention: what runs between the KV cache's read and write is the
    # caller's, the rest can be compiled as regions shared by every layer (model/regions.py).

    def project(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Input of the block -> q, k, v for attention (norm, projections, RoPE)."""
        return self.attention.project(self.attention_norm(x), cos, sin)

    def finish(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """Block input and attention output (B, T, H, D) -> block output (two residual branches)."""
        h = x + self.attention.output(attended)
        return h + self.feed_forward(self.ffn_norm(h))


def sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, *, causal: bool = False
) -> torch.Tensor:
    """Scaled dot-product attention on (B, T, H, D) layouts with GQA; mask is bool (B|1, 1, T, S).

    `causal=True` (no mask) lets PyTorch pick the flash kernel for a prefill that starts at position 0.
    """
    groups = q.shape[2] // k.shape[2]
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
    if groups > 1 and causal and NATIVE_GQA:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return out.transpose(1, 2)
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    return out.transpose(1, 2)  # (B, T, H, D)


def gqa_decode(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One query per sequence against its cache, reading each KV head once (no repeat_interleave).

    q (B, 1, H, D); keys/values (B, S, Hkv, D); mask bool (B, S) -> (B, 1, H, D). Softmax in fp32.
    """
    B, _, H, D = q.shape
    Hkv = keys.shape[2]
    qg = q.view(B, Hkv, H // Hkv, D)  # head h reads KV head h // (H / Hkv)
    scores = torch.matmul(qg, keys.permute(0, 2, 3, 1)).float() * D**-0.5  # (B, Hkv, G, S)
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(values.dtype)
    out = torch.matmul(probs, values.transpose(1, 2))  # (B, Hkv, G, D)
    return out.reshape(B, 1, H, D)
