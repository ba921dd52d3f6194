"""Tiling a capture the model would shrink too much: the warning, the grid, and pixel-exact tiles."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pixdesk.inputs import plan_tiles
from pixdesk.inputs.pixels import ImageBytes, RawImage, Rect, parse_ppm, png_size
from pixdesk.inputs.screenshot import assemble
from pixdesk.inputs.tiling import downscale_warning, tile_image


def _covered(width: int, height: int, rects: list[Rect]) -> bool:
    cols = sorted({(r.x, r.w) for r in rects})
    rows = sorted({(r.y, r.h) for r in rects})
    return _axis_covered(width, cols) and _axis_covered(height, rows) and len(rects) == len(cols) * len(rows)


def _axis_covered(length: int, spans: list[tuple[int, int]]) -> bool:
    reach = 0
    for start, size in spans:
        if start > reach:
            return False
        reach = max(reach, start + size)
    return reach == length


def _overlaps(spans: list[tuple[int, int]]) -> list[int]:
    return [a0 + aw - b0 for (a0, aw), (b0, _) in zip(spans, spans[1:])]


def test_4k_capture_warns_and_tiles_within_1024_with_overlap():
    warn = downscale_warning(3840, 2160, 1024)
    assert warn is not None and warn.factor == pytest.approx(3.75) and warn.tiles == 12
    assert "3840x2160" in warn.message and "shrunk 3.8x" in warn.message and "12 tiles" in warn.message
    plan = plan_tiles(3840, 2160, 1024, overlap=64)
    assert (plan.cols, plan.rows, plan.tile_w, plan.tile_h) == (4, 3, 1008, 763)
    assert all(r.w <= 1024 and r.h <= 1024 for r in plan.rects)
    assert _covered(3840, 2160, plan.rects)
    xs = sorted({(r.x, r.w) for r in plan.rects})
    ys = sorted({(r.y, r.h) for r in plan.rects})
    assert [x for x, _ in xs] == [0, 944, 1888, 2832]
    assert min(_overlaps(xs)) >= 64 and min(_overlaps(ys)) >= 64


def test_no_warning_up_to_2x_and_one_tile_when_it_fits():
    assert downscale_warning(2048, 1152, 1024) is None  # exactly 2x: still legible enough
    assert downscale_warning(2049, 100, 1024) is not None
    plan = plan_tiles(800, 600, 1024)
    assert plan.rects == [Rect(0, 0, 800, 600)]


@pytest.mark.parametrize("size", [(1025, 1025), (5120, 1440), (1366, 768), (7680, 4320), (333, 2500)])
def test_plans_cover_everything_with_overlap(size):
    w, h = size
    plan = plan_tiles(w, h, 1024, overlap=64, max_tiles=100)
    assert _covered(w, h, plan.rects)
    assert all(r.w <= 1024 and r.h <= 1024 for r in plan.rects)
    for spans in ({(r.x, r.w) for r in plan.rects}, {(r.y, r.h) for r in plan.rects}):
        if len(spans) > 1:
            assert min(_overlaps(sorted(spans))) >= 64


def test_tile_budget_grows_tiles_instead_of_exceeding_max_images():
    plan = plan_tiles(7680, 4320, 1024, max_tiles=12)  # 8K would need 8x5 tiles of 1024
    assert len(plan.rects) <= 12 and _covered(7680, 4320, plan.rects)
    assert max(plan.tile_w, plan.tile_h) > 1024


def test_3840x2160_capture_is_split_into_exact_pixel_tiles():
    y, x = np.mgrid[0:2160, 0:3840]  # every pixel unique: (x % 256, y % 256, 16 * (x // 256) + y // 256)
    pixels = np.stack([x % 256, y % 256, 16 * (x // 256) + y // 256], axis=-1).astype(np.uint8)
    raw = RawImage(pixels.tobytes(), 3840, 2160)
    whole = Image.fromarray(pixels)
    untiled = assemble(raw, backend="x11", max_image_size=1024)
    assert (
        untiled.downscale is not None
        and len(untiled.images) == 1
        and untiled.notes == [untiled.downscale.message]
    )
    tiled = assemble(raw, backend="x11", tile=True, max_image_size=1024)
    assert len(tiled.images) == len(tiled.tiles) == 12 and tiled.downscale is None
    assert "12 tiles (4 across x 3 down" in tiled.notes[0]
    for image, rect in zip(tiled.images, tiled.tiles):
        assert image.mime == "image/png" and png_size(image.data) == (rect.w, rect.h)
        tile = Image.open(io.BytesIO(image.data))
        assert tile.tobytes() == whole.crop((rect.x, rect.y, rect.x + rect.w, rect.y + rect.h)).tobytes()


def test_encoded_captures_warn_but_are_not_decoded_to_tile():
    buf = io.BytesIO()
    Image.new("RGB", (3000, 1000)).save(buf, format="PNG")
    got = assemble(ImageBytes(buf.getvalue(), "image/png"), backend="portal", tile=True)
    assert (got.width, got.height) == (3000, 1000) and len(got.images) == 1
    assert got.downscale is not None and "tiling is not available with the portal backend" in got.notes[1]


def test_tile_image_matches_plan_order():
    raw = RawImage(bytes(range(256)) * (30 * 20 * 3 // 256) + bytes(30 * 20 * 3 % 256), 30, 20)
    plan = plan_tiles(30, 20, 16, overlap=4)
    tiles = tile_image(raw, plan)
    assert [png_size(t.data) for t in tiles] == [(r.w, r.h) for r in plan.rects]


def test_ppm_parser():
    body = bytes(range(2 * 3 * 3))
    raw = parse_ppm(b"P6\n# grim\n3 2\n255\n" + body)
    assert (raw.width, raw.height, raw.rgb) == (3, 2, body)
    with pytest.raises(Exception, match="PPM"):
        parse_ppm(b"P5\n3 2\n255\n" + body)
    with pytest.raises(Exception, match="expected 3x2x3"):
        parse_ppm(b"P6\n3 2\n255\n" + body[:-1])
