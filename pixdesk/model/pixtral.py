"""Pixtral: token embedding, image features scattered into [IMG] slots, Mistral decoder, LM head.

The model holds weights only. Attention state lives in the engine's KV cache; `forward` receives a
`KVView` (anything with `attend(layer, q, k, v)`) and the absolute positions of the tokens it gets.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from pixdesk.errors import ImageTokenMismatch
from pixdesk.model.args import ModelArgs
from pixdesk.model.dense_gemv import use_decode_gemv
from pixdesk.model.layers import RMSNorm, TransformerBlock
from pixdesk.model.quant import decoder_linear_names, prepare_for_device
from pixdesk.model.regions import CompiledBlocks
from pixdesk.model.rope import rope_tables, text_angles
from pixdesk.model.vision import VisionEncoder, VisionLanguageAdapter


class KVView(Protocol):
    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...


class Pixtral(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        t = args.text
        self.tok_embeddings = nn.Embedding(t.vocab_size, t.dim)
        self.layers = nn.ModuleList(
            TransformerBlock(t.dim, t.n_heads, t.n_kv_heads, t.head_dim, t.hidden_dim, t.norm_eps)
            for _ in range(t.n_layers)
        )
        self.norm = RMSNorm(t.dim, t.norm_eps)
        self.output = nn.Linear(t.dim, t.vocab_size, bias=False)
        if args.vision is not None:
            v = args.vision
            self.vision_encoder = VisionEncoder(v)
            self.vision_language_adapter = VisionLanguageAdapter(v.hidden_size, t.dim, v.adapter_bias)

    def fuse_projections(self) -> Pixtral:
        """Fuse q|k|v and gate|up in every decoder layer (after loading; names then differ from the file).
        Not the vision layers: fused there, their SiLU x up kernel took 162 us a layer against 81 unfused on
        an H200, more than the fused matmuls saved (bench/NOTES.md, session 14)."""
        for layer in self.layers:
            layer.attention.fuse()
            layer.feed_forward.fuse()
        use_decode_gemv(self, decoder_linear_names(self))
        return prepare_for_device(self)

    @property
    def dtype(self) -> torch.dtype:
        return self.tok_embeddings.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.tok_embeddings.weight.device

    def encode_images(self, images: list[torch.Tensor], blocks: CompiledBlocks | None = None) -> torch.Tensor:
        """Pixel tensors -> adapter outputs (sum of patches, dim), one row per [IMG] token."""
        if self.args.vision is None:
            raise ImageTokenMismatch("this checkpoint has no vision encoder; send text only")
        feats = self.vision_encoder([img.to(self.device) for img in images], blocks)
        return self.vision_language_adapter(feats)

    def embed(self, ids: torch.Tensor, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, T) -> embeddings (B, T, dim), [IMG] positions replaced by image features in order."""
        h = self.tok_embeddings(ids)
        img_id = self.args.vision.image_token_id if self.args.vision else None
        slots = ids == img_id if img_id is not None else torch.zeros_like(ids, dtype=torch.bool)
        n_slots, n_feats = int(slots.sum()), 0 if image_features is None else image_features.shape[0]
        if n_slots != n_feats:
            raise ImageTokenMismatch(f"{n_slots} [IMG] tokens but {n_feats} image feature rows")
        if n_feats:
            h = h.masked_scatter(slots[..., None], image_features.to(h.dtype))
        return h

    def forward(
        self, h: torch.Tensor, positions: torch.Tensor, kv: KVView, blocks: CompiledBlocks | None = None
    ) -> torch.Tensor:
        """Embeddings (B, T, dim) at absolute positions (B, T) -> final-normed hidden states (B, T, dim).

        `blocks`: run each layer as compiled regions (model/regions.py; prefill on a GPU)."""
        t = self.args.text
        cos, sin = rope_tables(text_angles(positions, t.head_dim, t.rope_theta))  # (B, T, 1, hd/2)
        for i, layer in enumerate(self.layers):
            attend = lambda q, k, v, i=i: kv.attend(i, q, k, v)  # noqa: E731
            h = blocks(layer, h, cos, sin, attend) if blocks else layer(h, cos, sin, attend)
        return blocks.norm(self.norm, h) if blocks else self.norm(h)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states -> fp32 logits (compute only the positions you need)."""
        return self.output(h).float()
