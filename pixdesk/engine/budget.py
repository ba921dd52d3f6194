"""Automatic image-token budget: shrink a prompt's images until prompt + max_tokens fits the context.

Image grids are the only runs of the ids [IMG] / [IMG_BREAK] / [IMG_END] in a prompt (user text never
encodes to control ids), in the same order as `prompt.images`, so a grid can be swapped for a smaller one.
Example: context 200, max_tokens 100, text 12 tokens and one 10x12-patch image (10 x 13 = 130 tokens):
130 + 12 + 100 > 200; scaling the image to 6x7 patches (6 x 8 = 48 tokens) gives 160 <= 200.
"""

from __future__ import annotations

import torch.nn.functional as F

from pixdesk.tokenizer.chat import EncodedPrompt
from pixdesk.tokenizer.image import IMG_BREAK_ID, IMG_END_ID, IMG_ID, PreparedImage, image_token_ids

_GRID_IDS = (IMG_ID, IMG_BREAK_ID, IMG_END_ID)


def fit_images(prompt: EncodedPrompt, max_tokens: int, context: int, patch: int) -> EncodedPrompt | None:
    """The same prompt with uniformly smaller images that fits, or None if even 1x1 grids do not fit."""
    if not prompt.images or len(prompt.ids) + max_tokens <= context:
        return None
    grid_tokens = sum(len(img.token_ids()) for img in prompt.images)
    room = context - max_tokens - (len(prompt.ids) - grid_tokens)  # tokens the grids may use
    lo, hi, best = 0.0, 1.0, None
    for _ in range(20):  # bisect the scale: token counts only grow with it
        mid = (lo + hi) / 2
        grids = [_scaled_grid(img, mid) for img in prompt.images]
        if sum(r * (c + 1) for r, c in grids) <= room:
            lo, best = mid, grids
        else:
            hi = mid
    if best is None:
        return None
    images = [_resized(img, r, c, patch) for img, (r, c) in zip(prompt.images, best)]
    return EncodedPrompt(_swap_grids(prompt.ids, images), images)


def _scaled_grid(img: PreparedImage, scale: float) -> tuple[int, int]:
    return max(1, int(img.rows * scale)), max(1, int(img.cols * scale))


def _resized(img: PreparedImage, rows: int, cols: int, patch: int) -> PreparedImage:
    if (rows, cols) == (img.rows, img.cols):
        return img
    # Bicubic with antialias in normalized space (a linear map of the pixels, so the same as resizing RGB).
    pixels = F.interpolate(
        img.pixels[None], size=(rows * patch, cols * patch), mode="bicubic", antialias=True
    )
    digest = f"{img.digest}@{rows}x{cols}"  # another grid is other content for every cache
    return PreparedImage(pixels[0].contiguous(), rows, cols, digest, img.source_size)


def _swap_grids(ids: list[int], images: list[PreparedImage]) -> list[int]:
    out, i, k = [], 0, 0
    while i < len(ids):
        if ids[i] in _GRID_IDS:
            end = ids.index(IMG_END_ID, i) + 1  # a grid always ends with [IMG_END]
            out += image_token_ids(images[k].rows, images[k].cols)
            i, k = end, k + 1
        else:
            out.append(ids[i])
            i += 1
    assert k == len(images), "every image has exactly one grid"
    return out
