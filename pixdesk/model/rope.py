"""Rotary position embeddings in the native (interleaved-pair) convention, tables in fp32.

Native checkpoints rotate adjacent pairs (x[2i], x[2i+1]) of each head by angle_i (PIXTRAL.md §2.3).
HF checkpoints are permuted to this convention at load (weights/layouts.py), so one rotation serves both.
"""

from __future__ import annotations

import torch


def inv_freq(head_dim: int, theta: float, device=None) -> torch.Tensor:
    """omega_i = theta^(-2i/head_dim), i < head_dim/2, fp32."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    return 1.0 / (theta**exponents)


def text_angles(positions: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """(B, T) integer positions -> (B, T, head_dim/2) fp32 angles."""
    return positions.to(torch.float32)[..., None] * inv_freq(head_dim, theta, positions.device)


def vision_angles(rows: int, cols: int, head_dim: int, theta: float, device=None) -> torch.Tensor:
    """Angles for an image's rows x cols patch grid, row-major -> (rows*cols, head_dim/2) fp32.

    Height uses the even-indexed frequencies and width the odd-indexed ones (not first/second half):
    pair m < head_dim/4 gets r * omega[2m]; pair m >= head_dim/4 gets c * omega[2(m - head_dim/4) + 1].
    Example, head_dim 8: omega = [w0, w1, w2, w3]; patch (r, c) -> angles [r*w0, r*w2, c*w1, c*w3].
    """
    omega = inv_freq(head_dim, theta, device)  # (hd/2,)
    r = torch.arange(rows, dtype=torch.float32, device=device)
    c = torch.arange(cols, dtype=torch.float32, device=device)
    h_angles = r[:, None] * omega[0::2][None, :]  # (rows, hd/4)
    w_angles = c[:, None] * omega[1::2][None, :]  # (cols, hd/4)
    grid = torch.cat(
        [h_angles[:, None, :].expand(rows, cols, -1), w_angles[None, :, :].expand(rows, cols, -1)], dim=-1
    )  # (rows, cols, hd/2)
    return grid.reshape(rows * cols, head_dim // 2)


def rope_tables(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Angles (..., T, hd/2) -> (cos, sin) fp32, with a head axis inserted before the pair axis."""
    return torch.cos(angles)[..., None, :], torch.sin(angles)[..., None, :]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of x (..., T, H, D) in fp32; cos/sin broadcast as (..., T, 1, D/2)."""
    xf = x.float().unflatten(-1, (-1, 2))  # (..., T, H, D/2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)
