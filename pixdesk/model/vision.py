"""Pixtral vision encoder (patch conv, ln_pre, 2-D RoPE, bidirectional blocks) and the adapter."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pixdesk.model.args import VisionArgs
from pixdesk.model.layers import RMSNorm, TransformerBlock, sdpa
from pixdesk.model.regions import CompiledBlocks
from pixdesk.model.rope import rope_tables, vision_angles

ROPE_TABLES_KEPT = 8  # a 1024x1024 image's tables: 2 x 4,096 x 32 fp32 = 1 MiB


class VisionTransformer(nn.Module):
    def __init__(self, args: VisionArgs):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerBlock(
                args.hidden_size,
                args.num_attention_heads,
                args.num_attention_heads,
                args.head_dim,
                args.intermediate_size,
                args.norm_eps,
            )
            for _ in range(args.num_hidden_layers)
        )


class VisionEncoder(nn.Module):
    def __init__(self, args: VisionArgs):
        super().__init__()
        self.args = args
        self.patch_conv = nn.Conv2d(
            args.num_channels, args.hidden_size, args.patch_size, stride=args.patch_size, bias=False
        )
        self.ln_pre = RMSNorm(args.hidden_size, args.norm_eps)
        self.transformer = VisionTransformer(args)
        self._rope_tables: dict = {}  # (grids, device) -> (cos, sin): ~20 small kernels a request otherwise

    def forward(self, images: list[torch.Tensor], blocks: CompiledBlocks | None = None) -> torch.Tensor:
        """Images (3, H_i, W_i), multiples of patch_size -> features (sum_i h_i*w_i, hidden).

        `blocks`: run each layer as compiled regions (model/regions.py)."""
        patches, grids = [], []
        for img in images:
            emb = self.patch_conv(img.to(self.patch_conv.weight.dtype)[None])[0]  # (hidden, h, w)
            grids.append((emb.shape[1], emb.shape[2]))
            patches.append(emb.flatten(1).T)  # (h*w, hidden), row-major
        x = self.ln_pre(torch.cat(patches)[None])  # (1, L, hidden)
        cos, sin = self._rope(grids, x.device)
        spans = _spans(grids)
        attend = lambda q, k, v: _block_diagonal(q, k, v, spans)  # noqa: E731
        for layer in self.transformer.layers:
            x = blocks(layer, x, cos, sin, attend) if blocks else layer(x, cos, sin, attend)
        return x[0]

    def _rope(self, grids, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) (1, L, 1, hd/2) each, for the last few image layouts. Positions restart at (0, 0) for
        every image."""
        key = (tuple(grids), str(device))
        if key not in self._rope_tables:
            a = self.args
            angles = torch.cat([vision_angles(h, w, a.head_dim, a.rope_theta, device) for h, w in grids])
            while len(self._rope_tables) >= ROPE_TABLES_KEPT:
                self._rope_tables.pop(next(iter(self._rope_tables)))
            self._rope_tables[key] = rope_tables(angles[None])
        return self._rope_tables[key]


def _spans(grids: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, lo = [], 0
    for h, w in grids:
        out.append((lo, lo + h * w))
        lo += h * w
    return out


def _block_diagonal(q, k, v, spans: list[tuple[int, int]]) -> torch.Tensor:
    """Bidirectional attention within each image only (varlen: no padding, no L x L mask)."""
    if len(spans) == 1:
        return sdpa(q, k, v, None)
    return torch.cat([sdpa(q[:, a:b], k[:, a:b], v[:, a:b], None) for a, b in spans], dim=1)


class VisionLanguageAdapter(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, bias: bool):
        super().__init__()
        self.w_in = nn.Linear(in_dim, out_dim, bias=bias)
        self.w_out = nn.Linear(out_dim, out_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_out(F.gelu(self.w_in(x)))  # exact (erf) GELU
