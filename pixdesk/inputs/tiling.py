"""When a capture is much larger than the model's image size: say so, and split it into tiles on request.

The model sees at most `max_image_size` pixels per side (1024 for Pixtral-12B); tokenizer/image.py shrinks
anything larger. A 3840x2160 screen shrinks 3.75x, and 12 px text becomes 3 px: unreadable. Tiling sends the
capture as a grid of crops, each at most max_image_size per side, overlapping by `overlap` pixels so a word
cut by one tile edge is whole in the neighbour.

Worked example (3840x2160, max 1024, overlap 64), per axis:
  n    = ceil((L - overlap) / (max - overlap))   -> cols = ceil(3776 / 960) = 4, rows = ceil(2096 / 960) = 3
  size = ceil((L + (n - 1) * overlap) / n)       -> 1008 wide, 763 high (both <= 1024)
  x_i  = i * (L - size) // (n - 1)               -> 0, 944, 1888, 2832 (overlap 64); y: 0, 698, 1397
12 tiles in all; each is sent unshrunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .pixels import ImageBytes, RawImage, Rect, encode_png

DOWNSCALE_WARN = 2.0  # warn when the capture would shrink more than this to fit the model
DEFAULT_OVERLAP = 64


@dataclass(frozen=True)
class Downscale:
    """The capture is `factor` times larger than the model's image size; `tiles` tiles would avoid that."""

    width: int
    height: int
    max_image_size: int
    factor: float
    tiles: int

    @property
    def message(self) -> str:
        return (
            f"the capture is {self.width}x{self.height} px; the model sees at most {self.max_image_size} px "
            f"per side, so it would be shrunk {self.factor:.1f}x and small text may become unreadable. "
            f"Capture a window or a region instead, or send it as {self.tiles} tiles (--tile)."
        )


@dataclass(frozen=True)
class TilePlan:
    rects: list[Rect]  # left to right, then top to bottom
    rows: int
    cols: int
    tile_w: int
    tile_h: int

    def describe(self) -> str:
        return (
            f"sent as {len(self.rects)} tiles ({self.cols} across x {self.rows} down, each up to "
            f"{self.tile_w}x{self.tile_h} px, overlapping), left to right then top to bottom"
        )


def downscale_factor(width: int, height: int, max_image_size: int) -> float:
    return max(width, height) / max_image_size


def downscale_warning(
    width: int, height: int, max_image_size: int, *, overlap: int = DEFAULT_OVERLAP, max_tiles: int = 12
) -> Downscale | None:
    """A Downscale notice when fitting the capture would shrink it more than DOWNSCALE_WARN times."""
    factor = downscale_factor(width, height, max_image_size)
    if factor <= DOWNSCALE_WARN:
        return None
    plan = plan_tiles(width, height, max_image_size, overlap=overlap, max_tiles=max_tiles)
    return Downscale(width, height, max_image_size, factor, len(plan.rects))


def plan_tiles(
    width: int, height: int, max_size: int, *, overlap: int = DEFAULT_OVERLAP, max_tiles: int = 12
) -> TilePlan:
    """A grid of tiles covering width x height, each <= max_size per side when at most max_tiles allow it.

    When the grid would need more than max_tiles tiles (a request takes 12 images by default), the tile size
    grows past max_size until the grid fits; those tiles are then shrunk a little by the model's resize.
    """
    if width < 1 or height < 1 or max_size < 1:
        raise ValueError(f"bad tiling geometry {width}x{height}, max {max_size}")
    overlap = max(0, min(overlap, max_size // 4))
    size = max_size
    while True:
        xs, tile_w = _axis(width, size, overlap)
        ys, tile_h = _axis(height, size, overlap)
        if len(xs) * len(ys) <= max(1, max_tiles) or size >= max(width, height):
            break
        size += max(16, size // 16)
    rects = [Rect(x, y, tile_w, tile_h) for y in ys for x in xs]
    return TilePlan(rects, len(ys), len(xs), tile_w, tile_h)


def _axis(length: int, size: int, overlap: int) -> tuple[list[int], int]:
    """Start offsets and tile length along one axis (see the worked example above)."""
    if length <= size:
        return [0], length
    n = math.ceil((length - overlap) / (size - overlap))
    tile = math.ceil((length + (n - 1) * overlap) / n)
    while tile < size and _min_overlap(length, tile, n) < overlap:  # integer offsets may lose a pixel
        tile += 1
    return [i * (length - tile) // (n - 1) for i in range(n)], tile


def _min_overlap(length: int, tile: int, n: int) -> int:
    starts = [i * (length - tile) // (n - 1) for i in range(n)]
    return min(tile - (b - a) for a, b in zip(starts, starts[1:]))


def tile_image(raw: RawImage, plan: TilePlan) -> list[ImageBytes]:
    """Encode each tile of `plan` as PNG, in plan order."""
    return [ImageBytes(encode_png(raw, rect), "image/png") for rect in plan.rects]
