"""Transformer blocks as compiled regions: the small kernels of eager code fused, one compile for all layers.

Eager prefill runs ~30 kernels per decoder layer besides the matrix multiplies (RMSNorm in fp32, RoPE,
SiLU x up, residuals), each a full pass over (T, dim) activations; on a 4k-token image prompt that is tens
of milliseconds, and on a 20-token follow-up question the launches themselves are the cost. Compiling each
block's two halves around attention (`TransformerBlock.project` and `.finish`) fuses them into a few
Triton kernels around the cuBLAS GEMMs. The functions are compiled unbound, with the layer passed as an
argument: Dynamo treats the layer's parameters as inputs (inlined built-in modules), so one compiled graph
serves every layer of the same shape, and the sequence length is dynamic, so one graph serves every prompt
length. Attention stays outside (the caller's KV view does the cache writes and reads).

The decode step does not use this: it is compiled whole and replayed as a CUDA graph (engine/static.py).
"""

from __future__ import annotations

import torch

from pixdesk.model.layers import Attend, RMSNorm, TransformerBlock


class CompiledBlocks:
    """Callable as `blocks(layer, x, cos, sin, attend)`: the same result as `layer(x, cos, sin, attend)`."""

    def __init__(self):
        self.project = torch.compile(TransformerBlock.project, dynamic=True)
        self.finish = torch.compile(TransformerBlock.finish, dynamic=True)
        self.norm = torch.compile(RMSNorm.forward, dynamic=True)

    def __call__(
        self, layer: TransformerBlock, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend
    ) -> torch.Tensor:
        q, k, v = self.project(layer, x, cos, sin)
        return self.finish(layer, x, attend(q, k, v))
