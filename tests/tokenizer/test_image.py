"""pixdesk.tokenizer.image: grid rule, pixels and tokens vs mistral_common, odd modes, SECURITY rows 13-17.

Oracle: mistral_common 1.13.1 (`ImageEncoder` from the tekken_240911 tokenizer). Parity inputs are 8-bit and
carry no EXIF orientation, where pixdesk deliberately differs (PIXTRAL.md §10).
"""

from __future__ import annotations

import io
import random
import struct
import sys
import time
import warnings
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import GifImagePlugin, Image, ImageFile, PngImagePlugin, WebPImagePlugin

from pixdesk.errors import ImageTooLarge, InvalidConfig, InvalidImage, UnsupportedImageFormat
from pixdesk.tokenizer.image import (
    ALLOWED_FORMATS,
    CLIP_MEAN,
    CLIP_STD,
    ImageLimits,
    decode_image,
    image_token_ids,
    prepare_image,
    prepare_rgb,
    target_grid,
)

# Pixel tolerance against mistral_common, in normalized units (1/255/std ~ 0.0146 per 8-bit step).
# Both resamplers are bicubic a = -0.75 with clamp-to-edge borders on float32 0..255 input, so they agree up
# to float32 rounding of source coordinates and tap weights (OpenCV derives the scale in double, torch in
# float). Measured on the images below: max 3.0e-4, mean 2.0e-5 (about 1/50 of an 8-bit step at worst).
# The bounds leave 5-6x headroom; another kernel, border rule or clipping moves noise-image pixels by
# whole 8-bit steps (>= 1.5e-2) and fails them.
MAX_ABS_TOL = 2e-3
MEAN_ABS_TOL = 1e-4


def _enc(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise(w: int, h: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (h, w, channels) if channels > 1 else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _gradient(w: int, h: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r, g = 255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1)
    return np.stack([r, g, (r + g) / 2], axis=-1).round().astype(np.uint8)


def _rgb(data: bytes) -> np.ndarray:
    return np.asarray(decode_image(data))


def _png_chunk(tag: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))


def _png(width: int, height: int, idat: bytes, bit_depth: int = 8, colour: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    body = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def _patch_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    out = bytearray(data)
    sof = out.find(b"\xff\xc0")
    out[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(out)


def _gif(canvas: tuple[int, int], frame: tuple[int, int], lzw: bytes = b"\x02\x4c\x01\x00") -> bytes:
    # hand-made GIF: 2-colour global palette, one image descriptor at (0, 0); lzw = min code size + sub-blocks
    screen = struct.pack("<HHBBB", *canvas, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    return b"GIF89a" + screen + b"," + struct.pack("<HHHHB", 0, 0, *frame, 0) + lzw + b";"


@pytest.fixture(scope="module")
def oracle():
    mc = pytest.importorskip("mistral_common")
    pytest.importorskip("cv2")
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    path = Path(mc.__file__).parent / "data" / "tekken_240911.json"
    return MistralTokenizer.from_file(str(path)).instruct_tokenizer.image_encoder


def _oracle_encode(oracle, data: bytes):
    from mistral_common.protocol.instruct.chunk import ImageChunk

    return oracle(ImageChunk(image=Image.open(io.BytesIO(data))))


# ----------------------------------------------------------------------------------------------- grid

TABLE = [  # PIXTRAL.md §4: (w, h) -> (rows, cols), tokens
    ((40, 20), (2, 3), 8),
    ((16, 16), (1, 1), 2),
    ((16, 32), (2, 1), 4),
    ((17, 1), (1, 2), 3),
    ((500, 333), (21, 32), 693),
    ((1024, 1024), (64, 64), 4160),
    ((1025, 1000), (63, 64), 4095),
    ((1500, 1001), (43, 64), 2795),
    ((2048, 1024), (32, 64), 2080),
    ((3000, 100), (3, 64), 195),
]


@pytest.mark.parametrize(("size", "grid", "n_tokens"), TABLE)
def test_grid_matches_pixtral_table(size, grid, n_tokens):
    assert target_grid(*size) == grid
    ids = image_token_ids(*grid)
    assert len(ids) == n_tokens and ids[-1] == 13 and ids.count(10) == grid[0] * grid[1]


def test_grid_rounds_half_to_even():
    # 2048x33 -> ratio 2 -> height 16.5 rounds to 16 (one row); half-up would give 17 and two rows
    assert target_grid(2048, 33) == (1, 64)
    assert target_grid(2048, 35) == (2, 64)  # 17.5 -> 18
    assert target_grid(1025, 305) == (20, 64)  # PIXTRAL.md §4: HF's floor gives 19 rows here


def _grid_sizes() -> list[tuple[int, int]]:
    rng = random.Random(20240911)
    sizes = [s for s, _, _ in TABLE] + [(1, 1), (1, 4000), (4000, 1), (1, 65535), (65535, 1), (1025, 305)]
    sizes += [(2048, 33), (2048, 35), (1023, 1025), (1025, 1023), (1024, 1), (1, 1024), (1024, 1025)]
    for _ in range(200):  # log-uniform sizes
        sizes.append((int(10 ** rng.uniform(0, 4.2)), int(10 ** rng.uniform(0, 4.2))))
    for _ in range(150):  # straddling 1024
        sizes.append((rng.randint(1000, 1050), rng.randint(1, 3000)))
    for _ in range(100):  # exact multiples of 16
        sizes.append((16 * rng.randint(1, 200), 16 * rng.randint(1, 200)))
    for _ in range(100):  # extreme aspect ratios
        thin, long = rng.randint(1, 8), rng.randint(100, 20000)
        sizes.append((thin, long) if rng.random() < 0.5 else (long, thin))
    return sizes


def test_grid_matches_mistral_common_on_random_sizes(oracle):
    sizes = _grid_sizes()
    assert len(sizes) >= 500
    for w, h in sizes:
        width_tokens, height_tokens = oracle._image_to_num_tokens(SimpleNamespace(size=(w, h)))
        assert target_grid(w, h) == (height_tokens, width_tokens), (w, h)


# ----------------------------------------------------------------------------------------------- parity


def _parity_images() -> list[tuple[str, bytes]]:
    rgb = lambda a: Image.fromarray(a, "RGB")
    noise_sizes = [(40, 20), (16, 16), (17, 1), (1, 1), (7, 300), (64, 64), (500, 333), (1025, 1000)]
    noise_sizes += [(1500, 1001), (3000, 90)]
    imgs = [(f"noise {w}x{h}", _enc(rgb(_noise(w, h, seed=w)), "PNG")) for w, h in noise_sizes]
    gradient_sizes = [(30, 20), (333, 777), (1024, 1024), (2000, 1500)]
    imgs += [(f"gradient {w}x{h}", _enc(rgb(_gradient(w, h)), "PNG")) for w, h in gradient_sizes]
    alpha = _noise(100, 60, 4, seed=1)
    pal = Image.fromarray(_noise(40, 40, 1, seed=2) % 8, "L").convert("P")
    pal.putpalette(list(range(0, 256, 11))[:24])
    imgs += [
        ("RGBA", _enc(Image.fromarray(alpha, "RGBA"), "PNG")),
        ("LA", _enc(Image.fromarray(alpha[..., 2:], "LA"), "PNG")),
        ("P+tRNS", _enc(pal, "PNG", transparency=3)),
        ("L", _enc(Image.fromarray(_noise(300, 200, 1), "L"), "PNG")),
        ("1-bit", _enc(Image.fromarray(_noise(33, 17, 1) > 127), "PNG")),
        ("CMYK JPEG", _enc(Image.fromarray(_noise(120, 80, 4), "CMYK"), "JPEG")),
        ("RGB JPEG", _enc(rgb(_gradient(640, 480)), "JPEG", quality=85)),
        ("GIF", _enc(rgb(_gradient(48, 48)), "GIF")),
        ("WebP", _enc(rgb(_noise(200, 100)), "WEBP", quality=80)),
    ]
    return imgs


def test_tokens_and_pixels_match_mistral_common(oracle):
    worst_max = worst_mean = 0.0
    for name, data in _parity_images():
        want = _oracle_encode(oracle, data)
        got = prepare_image(data)
        assert got.token_ids() == want.tokens, name
        assert got.pixels.dtype.is_floating_point and got.pixels.is_contiguous()
        assert tuple(got.pixels.shape) == want.image.shape, name
        diff = np.abs(got.pixels.numpy() - want.image)
        worst_max, worst_mean = max(worst_max, float(diff.max())), max(worst_mean, float(diff.mean()))
        assert diff.max() <= MAX_ABS_TOL and diff.mean() <= MEAN_ABS_TOL, (name, diff.max(), diff.mean())
    assert worst_max > 0  # the resampler really is torch's, not a copy of OpenCV


def test_unresized_image_is_exact_normalization():
    a = _noise(32, 48)
    got = prepare_rgb(a).pixels.numpy()
    want = (a.astype(np.float32) / 255 - np.float32(CLIP_MEAN)) / np.float32(CLIP_STD)
    np.testing.assert_allclose(got, want.transpose(2, 0, 1), rtol=0, atol=1e-6)
    white = prepare_rgb(np.full((16, 16, 3), 255, np.uint8)).pixels[:, 0, 0]
    np.testing.assert_allclose(white.numpy(), [1.9303, 2.0749, 2.1459], atol=1e-4)  # PIXTRAL.md §4 step 2


def test_resampling_overshoot_is_not_clipped():
    a = np.zeros((20, 20, 3), np.uint8)
    a[:, 10:] = 255  # a hard edge rings under bicubic a = -0.75
    red = prepare_rgb(a).pixels.numpy()[0]  # 20x20 -> 32x32 upscale
    assert red.max() > (1 - CLIP_MEAN[0]) / CLIP_STD[0] + 0.05
    assert red.min() < -CLIP_MEAN[0] / CLIP_STD[0] - 0.05


# ----------------------------------------------------------------------------------------------- pixel modes
# Golden values computed here with numpy, independently of Pillow's converters.


def _over_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    c, a = colour.astype(np.int64), alpha.astype(np.int64)[..., None]
    return np.rint((c * a + 255 * (255 - a)) / 255).astype(np.uint8)


def test_rgba_and_la_composite_on_white():
    rgba = _noise(37, 23, 4, seed=5)
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255
    np.testing.assert_array_equal(
        _rgb(_enc(Image.fromarray(rgba, "RGBA"), "PNG")), _over_white(rgba[..., :3], rgba[..., 3])
    )
    la = rgba[..., 2:]
    grey = np.repeat(la[..., :1], 3, axis=-1)
    np.testing.assert_array_equal(_rgb(_enc(Image.fromarray(la, "LA"), "PNG")), _over_white(grey, la[..., 1]))
    assert tuple(_rgb(_enc(Image.fromarray(rgba, "RGBA"), "PNG"))[0, 0]) == (255, 255, 255)


def test_palette_with_transparency():
    idx = (_noise(20, 10, 1, seed=6) % 4).astype(np.uint8)
    palette = np.array([[200, 10, 10], [10, 200, 10], [10, 10, 200], [50, 60, 70]], np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette(palette.tobytes())
    want = palette[idx]
    want[idx == 2] = 255  # index 2 is transparent -> white
    for fmt in ("PNG", "GIF"):
        np.testing.assert_array_equal(_rgb(_enc(im, fmt, transparency=2)), want, err_msg=fmt)


def test_grey_and_bilevel():
    grey = _noise(19, 7, 1, seed=7)
    np.testing.assert_array_equal(
        _rgb(_enc(Image.fromarray(grey, "L"), "PNG")), np.repeat(grey[..., None], 3, -1)
    )
    bits = grey > 127
    want = np.repeat(np.where(bits, 255, 0).astype(np.uint8)[..., None], 3, -1)
    np.testing.assert_array_equal(_rgb(_enc(Image.fromarray(bits), "PNG")), want)


def test_cmyk_jpeg_naive_conversion():
    data = _enc(Image.fromarray(_noise(24, 16, 4, seed=8), "CMYK"), "JPEG", quality=95)
    cmyk = np.asarray(Image.open(io.BytesIO(data))).astype(np.int64)  # the decoded (lossy) CMYK samples
    c, k = cmyk[..., :3], cmyk[..., 3:]
    want = np.rint((255 - c) * (255 - k) / 255).astype(np.uint8)
    np.testing.assert_array_equal(_rgb(data), want)


def test_sixteen_bit_png_is_scaled_not_clipped():
    mid = Image.fromarray(np.full((8, 8), 32768, np.uint16))
    assert set(np.unique(_rgb(_enc(mid, "PNG")))) == {128}  # mistral_common would give 255 (PIXTRAL.md §10)
    ramp = (np.arange(256 * 4, dtype=np.uint32).reshape(16, 64) * 64).astype(np.uint16)
    want = np.rint(ramp / 257).astype(np.uint8)
    got = _rgb(_enc(Image.fromarray(ramp), "PNG"))
    np.testing.assert_array_equal(got, np.repeat(want[..., None], 3, -1))
    assert got.max() > 250 and got.min() == 0


def test_sixteen_bit_png_with_transparent_grey():
    a = np.full((4, 6), 1000, np.uint16)
    a[1, 2] = 40000
    got = _rgb(_enc(Image.fromarray(a), "PNG", transparency=1000))
    assert tuple(got[1, 2]) == (156, 156, 156)  # rint(40000 / 257)
    assert (got[a == 1000] == 255).all()  # the tRNS grey is see-through -> white


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def test_exif_orientation_is_applied():
    a = _gradient(40, 24)
    a[:8, :8] = (255, 0, 0)  # marker in the top-left corner
    data = _enc(Image.fromarray(a), "JPEG", quality=95, exif=_exif(6))
    plain = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # Pillow decode, orientation ignored
    np.testing.assert_array_equal(_rgb(data), np.rot90(plain, k=-1))  # 6 = rotate 90 degrees clockwise
    prepared = prepare_image(data)
    assert prepared.source_size == (24, 40) and (prepared.rows, prepared.cols) == (3, 2)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientations_on_tiny_images(orientation):
    a = _noise(3, 2, seed=orientation)  # 3 wide, 2 tall: every orientation is distinguishable
    got = _rgb(_enc(Image.fromarray(a), "PNG", exif=_exif(orientation)))
    want = {
        1: a,
        2: a[:, ::-1],
        3: a[::-1, ::-1],
        4: a[::-1],
        5: a.transpose(1, 0, 2),
        6: np.rot90(a, -1),
        7: a[::-1, ::-1].transpose(1, 0, 2),
        8: np.rot90(a, 1),
    }[orientation]
    np.testing.assert_array_equal(got, want)
    square = _enc(Image.fromarray(_noise(3, 3, seed=9)), "JPEG", exif=_exif(orientation))  # SECURITY row 16
    prepared = prepare_image(square)
    assert prepared.source_size == (3, 3) and prepared.n_patches == 1 and prepared.pixels.shape == (3, 16, 16)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_malformed_exif_is_ignored():
    data = _enc(Image.fromarray(_noise(5, 4)), "JPEG", exif=b"Exif\x00\x00MM\x00*\xff\xff\xff\xff")
    assert _rgb(data).shape == (4, 5, 3)


# ----------------------------------------------------------------------------------------------- SECURITY 13


@pytest.fixture(scope="module")
def bomb_png() -> bytes:
    # 50,000 x 50,000 1-bit grey, all zeros: 312 MB of scanlines deflated to ~1.4 MB, streamed so the test
    # itself never holds more than one 6 MB block
    z = zlib.compressobj(1)
    block = bytes(1 + 50_000 // 8) * 1000  # 1000 rows of (filter byte + 6250 zero bytes)
    idat = b"".join(z.compress(block) for _ in range(50)) + z.flush()
    return _png(50_000, 50_000, idat, bit_depth=1)


def _forbid_decode(monkeypatch) -> None:
    def load(self):
        raise AssertionError(f"decoded a {self.size} {self.format} image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


@pytest.fixture
def no_decode(monkeypatch):
    """Fail the test if Pillow decodes any pixels."""
    _forbid_decode(monkeypatch)


def _peak_rss_growth_mb(fn) -> float:
    resource = pytest.importorskip("resource")  # POSIX only
    unit = 2**20 if sys.platform == "darwin" else 2**10  # ru_maxrss is bytes on macOS, KiB on Linux
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * unit / 2**20


def test_png_bomb_rejected_before_decode(bomb_png, no_decode):
    assert len(bomb_png) < 2_000_000
    err = None

    def attempt():
        nonlocal err
        with pytest.raises(ImageTooLarge) as err:
            prepare_image(bomb_png)

    t0 = time.perf_counter()
    assert _peak_rss_growth_mb(attempt) < 200  # decoding would need >= 2.5 GB
    assert time.perf_counter() - t0 < 0.5
    msg = err.value.message
    assert "50000x50000" in msg and "2.5 Gpx" in msg and "64 Mpx" in msg and "images.max_pixels" in msg
    assert err.value.http_status == 413 and err.value.code == "image_too_large"


def test_pillow_globals_untouched(bomb_png):
    filters = list(warnings.filters)
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    for data in (bomb_png, _patch_jpeg_size(_enc(Image.new("RGB", (8, 8)), "JPEG"), 10_000, 9_000), b"junk"):
        with pytest.raises((ImageTooLarge, InvalidImage)):
            decode_image(data)
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before
    assert warnings.filters == filters


@pytest.mark.parametrize(
    "size",
    [
        (9_000, 8_000),  # 72 Mpx: over our cap, under Pillow's warning -> our header check after open()
        (10_000, 9_000),  # 90 Mpx: Pillow's DecompressionBombWarning, raised as an error
        (65_000, 65_000),  # 4.2 Gpx: Pillow's DecompressionBombError inside open()
    ],
)
def test_jpeg_header_bomb(size, no_decode):
    data = _patch_jpeg_size(_enc(Image.new("RGB", (8, 8), "red"), "JPEG"), *size)
    with pytest.raises(ImageTooLarge, match="images.max_pixels"):
        prepare_image(data)


def test_pillow_bomb_warning_is_an_error_even_above_our_cap(no_decode):
    data = _patch_jpeg_size(_enc(Image.new("RGB", (8, 8)), "JPEG"), 10_000, 9_000)  # 90 Mpx > Pillow's 89.5
    with pytest.raises(ImageTooLarge, match="Pillow's limit"):
        decode_image(data, limits=ImageLimits(max_pixels=150_000_000))


def test_webp_canvas_checked_before_pillow(monkeypatch):
    # VP8X header claiming 16384x16384: Pillow's WebP decoder would allocate the canvas inside open()
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("Image.open reached"))
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (16383).to_bytes(3, "little") * 2
    data = b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x
    with pytest.raises(ImageTooLarge, match="16384x16384"):
        decode_image(data)


@pytest.mark.parametrize("frame", [(9_000, 8_000), (10_000, 9_000), (20_000, 20_000)])
def test_gif_frame_larger_than_canvas_is_too_large(frame, no_decode):
    with pytest.raises(ImageTooLarge):
        decode_image(_gif((1, 1), frame))


def test_gif_frame_larger_than_small_canvas_decodes_within_limits():
    data = bytearray(_enc(Image.new("P", (64, 32), 1), "GIF"))
    data[6:10] = struct.pack("<HH", 2, 2)  # shrink the logical screen below the frame
    rgb = _rgb(bytes(data))
    assert rgb.shape == (32, 64, 3)  # Pillow grows the canvas to the frame; the header check saw 64x32
    assert prepare_image(bytes(data)).n_patches == 8


def test_byte_and_pixel_limits_are_configurable():
    data = _enc(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageTooLarge, match="images.max_bytes"):
        decode_image(data, limits=ImageLimits(max_bytes=len(data) - 1))
    with pytest.raises(ImageTooLarge, match="10000 px"):
        decode_image(data, limits=ImageLimits(max_pixels=9_999))
    assert decode_image(data, limits=ImageLimits(max_pixels=10_000)).size == (100, 100)
    with pytest.raises(InvalidConfig):
        ImageLimits(max_frames_scanned=2)


# ----------------------------------------------------------------------------------------------- SECURITY 14


def _corrupt_samples() -> list[tuple[str, bytes]]:
    noise = Image.fromarray(_noise(64, 64, seed=3))
    out = []
    for fmt in ("PNG", "JPEG", "WEBP", "GIF"):
        data = _enc(noise, fmt)
        out += [(f"{fmt} cut {f}", data[: int(len(data) * f)]) for f in (0.02, 0.3, 0.6, 0.9, 0.99)]
    png = _enc(noise, "PNG")
    mid = len(png) // 2
    out.append(("PNG idat byte flipped", png[:mid] + bytes([png[mid] ^ 0xFF]) + png[mid + 1 :]))
    out.append(("PNG IHDR crc", png[:29] + bytes([png[29] ^ 1]) + png[30:]))
    out.append(("PNG signature only", png[:8]))
    out.append(("GIF header only", _enc(noise, "GIF")[:13]))
    return out


@pytest.mark.parametrize(("name", "data"), _corrupt_samples(), ids=lambda v: v if isinstance(v, str) else "")
def test_corrupt_or_truncated_is_invalid(name, data):
    with pytest.raises(InvalidImage) as err:
        prepare_image(data)
    assert err.value.http_status == 400 and err.value.code == "invalid_image"


def test_zero_and_huge_dimensions_are_invalid():
    row = zlib.compress(b"\x00\x00")
    for w, h in [(0, 1), (1, 0), (0, 0), (2**31, 1), (2**32 - 1, 2**32 - 1)]:  # PNG caps sides at 2^31-1
        with pytest.raises(InvalidImage, match="width and height"):
            decode_image(_png(w, h, row))
    with pytest.raises(InvalidImage):
        decode_image(_patch_jpeg_size(_enc(Image.new("RGB", (8, 8)), "JPEG"), 8, 0))
    with pytest.raises(InvalidImage):
        decode_image(_gif((0, 0), (0, 0)))


@pytest.mark.parametrize("seed", range(20))
def test_random_bytes_labelled_png_are_invalid(seed):
    junk = np.random.default_rng(seed).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    for data in (junk, b"\x89PNG\r\n\x1a\n" + junk):
        with pytest.raises(InvalidImage):
            prepare_image(data)


def test_empty_and_non_bytes_are_invalid():
    for bad in (b"", "not bytes", None):
        with pytest.raises(InvalidImage):
            decode_image(bad)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------- SECURITY 15


def _pillow_written(fmt: str) -> bytes:
    return _enc(Image.new("RGB", (32, 32), (10, 20, 30)), fmt)


def _psd() -> bytes:
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 4, 4, 8, 3)  # version 1, 3 channels, 4x4, 8-bit RGB
    return header + bytes(4 * 3) + struct.pack(">H", 0) + bytes(48)  # no colour data/resources/layers, raw


def _fits() -> bytes:
    values = [("SIMPLE", "T"), ("BITPIX", "8"), ("NAXIS", "2"), ("NAXIS1", "4"), ("NAXIS2", "4")]
    cards = [f"{key:<8}= {value:>20}" for key, value in values] + ["END"]
    return "".join(c.ljust(80) for c in cards).ljust(2880).encode() + bytes(2880)


def _tga_v1() -> bytes:
    return _pillow_written("TGA").split(b"\x00" * 8 + b"TRUEVISION-XFILE")[0]  # drop the v2 footer


PILLOW_WRITES = (
    "BMP",
    "TIFF",
    "TGA",
    "EPS",
    "PDF",
    "ICO",
    "PPM",
    "PCX",
    "SGI",
    "DDS",
    "QOI",
    "ICNS",
    "JPEG2000",
)
PILLOW_READABLE = {  # formats Pillow would open without the allow-list
    **{f: (lambda f=f: _pillow_written(f)) for f in PILLOW_WRITES},
    "PSD": _psd,
    "FITS": _fits,
    "TGA v1": _tga_v1,
}


@pytest.mark.parametrize("name", sorted(PILLOW_READABLE))
def test_other_formats_are_unsupported(name, monkeypatch):
    data = PILLOW_READABLE[name]()
    if name != "PDF":  # Pillow only writes PDF
        assert Image.open(io.BytesIO(data)).format not in ALLOWED_FORMATS  # a genuine sample
    _forbid_decode(monkeypatch)
    with pytest.raises(UnsupportedImageFormat) as err:
        prepare_image(data)
    assert err.value.http_status == 415 and "PNG, JPEG, WebP" in err.value.message


@pytest.mark.parametrize(
    "data",
    [
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
        b'\xef\xbb\xbf\n  <svg width="9" height="9"></svg>',
        b"\x00\x00\x00\x00\x00\x00\x00\x04" + bytes(248),  # McIdas area file
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",
    ],
)
def test_more_unsupported_by_magic(data):
    with pytest.raises(UnsupportedImageFormat):
        decode_image(data)


# ----------------------------------------------------------------------------------------------- SECURITY 16


@pytest.mark.parametrize(
    ("size", "grid"),
    [((1, 1), (1, 1)), ((1, 65535), (64, 1)), ((65535, 1), (1, 64)), ((5, 3), (1, 1)), ((15, 17), (2, 1))],
)
def test_degenerate_geometry_gives_valid_grid(size, grid):
    w, h = size
    prepared = prepare_image(_enc(Image.new("L", size, 77), "PNG"))
    assert (prepared.rows, prepared.cols) == grid and prepared.source_size == size
    assert tuple(prepared.pixels.shape) == (3, 16 * grid[0], 16 * grid[1])
    assert len(prepared.token_ids()) == grid[0] * (grid[1] + 1)
    grey = (77 / 255 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)  # a flat image stays flat after bicubic
    flat = prepared.pixels.numpy().reshape(3, -1).T  # (H*W, 3)
    np.testing.assert_allclose(flat, np.broadcast_to(grey, flat.shape), atol=1e-5)


# ----------------------------------------------------------------------------------------------- SECURITY 17


def _animated(fmt: str, n: int) -> bytes:
    frames = []
    for i in range(n):
        frame = np.full((16, 16), 40, np.uint8)
        frame.flat[i % 256] = 255  # every frame differs, so no encoder folds frames together
        frame[0, 0] = 200 if i == 0 else 0
        frames.append(Image.fromarray(frame).convert("RGB" if fmt == "WEBP" else "L"))
    kw = {"lossless": True} if fmt == "WEBP" else {}
    return _enc(frames[0], fmt, save_all=True, append_images=frames[1:], **kw)


@pytest.mark.parametrize(("fmt", "n"), [("GIF", 1000), ("PNG", 300), ("WEBP", 300)])
def test_animated_only_first_frame(fmt, n, monkeypatch):
    data = _animated(fmt, n)
    assert Image.open(io.BytesIO(data)).n_frames == n
    seeks: list[int] = []
    for cls in (GifImagePlugin.GifImageFile, PngImagePlugin.PngImageFile, WebPImagePlugin.WebPImageFile):
        real = cls.seek
        monkeypatch.setattr(cls, "seek", lambda self, f, real=real: (seeks.append(f), real(self, f))[1])
    t0 = time.perf_counter()
    rgb = _rgb(data)
    assert time.perf_counter() - t0 < 0.2
    assert seeks in ([], [0]) and rgb.shape == (16, 16, 3)
    assert tuple(rgb[0, 0]) == (200, 200, 200) and tuple(rgb[0, 1]) == (40, 40, 40)  # frame 0's pixels


def test_prepare_rgb_rejects_bad_arrays():
    shapes = [((4, 4), np.uint8), ((4, 4, 4), np.uint8), ((4, 4, 3), np.float32), ((0, 4, 3), np.uint8)]
    for bad in [np.zeros(shape, dtype) for shape, dtype in shapes] + [[[1, 2, 3]]]:
        with pytest.raises(InvalidImage):
            prepare_rgb(bad)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------- max_patches


def _reference_budget_grid(w: int, h: int, budget: int, patch: int = 16) -> tuple[int, int]:
    """Brute force over (rows, cols) pairs some uniform scale s produces: cols c needs s in ((c-1)/fw, c/fw]
    and rows r needs s in ((r-1)/fh, r/fh] with fw = w/patch, fh = h/patch. Take the pair that fits the
    budget at the largest s (exact integer comparisons; w, h are the sizes after the 1024 rule)."""
    best, best_s = None, None  # best_s as a fraction (num, den) of s * patch
    for c in range(1, -(-w // patch) + 1):
        for r in range(1, -(-h // patch) + 1):
            lo = max((c - 1) * h, (r - 1) * w)  # common denominator w * h
            hi = min(c * h, r * w)
            if lo < hi and r * c <= budget and (best_s is None or hi * best_s[1] > best_s[0] * (w * h)):
                best, best_s = (r, c), (hi, w * h)
    assert best is not None
    return best


def _fit_1024(w: int, h: int) -> tuple[int, int]:
    ratio = max(w / 1024, h / 1024)
    return (max(round(w / ratio), 1), max(round(h / ratio), 1)) if ratio > 1 else (w, h)


def test_max_patches_worked_example():
    assert target_grid(1500, 1001) == (43, 64)
    assert target_grid(1500, 1001, max_patches=1024) == (26, 39)  # the target_grid docstring example
    assert target_grid(1500, 1001, max_patches=2752) == (43, 64)  # budget not binding: unchanged


def test_max_patches_is_the_largest_fitting_scale():
    rng = random.Random(7)
    cases = [
        (1500, 1001, 1024),
        (4000, 1, 10),
        (1, 4000, 10),
        (1024, 1024, 1),
        (333, 777, 100),
        (640, 480, 300),
    ]
    cases += [(rng.randint(1, 3000), rng.randint(1, 3000), rng.randint(1, 900)) for _ in range(60)]
    for w, h, budget in cases:
        rows, cols = target_grid(w, h, max_patches=budget)
        full_rows, full_cols = target_grid(w, h)
        assert rows * cols <= budget and rows <= full_rows and cols <= full_cols
        if full_rows * full_cols > budget:
            fw, fh = _fit_1024(w, h)
            assert (rows, cols) == _reference_budget_grid(fw, fh, budget), (w, h, budget)
            # aspect kept: one uniform scale of the image fills the grid to within one patch on each side
            s_lo, s_hi = max((cols - 1) / fw, (rows - 1) / fh), min(cols / fw, rows / fh)
            assert s_lo < s_hi, (w, h, budget)
        else:
            assert (rows, cols) == (full_rows, full_cols)


def test_max_patches_applies_to_pixels():
    prepared = prepare_image(_enc(Image.fromarray(_gradient(1500, 1001)), "PNG"), max_patches=1024)
    assert (prepared.rows, prepared.cols) == (26, 39) and tuple(prepared.pixels.shape) == (3, 416, 624)
    for bad in (0, -5):
        with pytest.raises(InvalidConfig, match="max_patches"):
            target_grid(10, 10, max_patches=bad)


# ----------------------------------------------------------------------------------------------- digest


def test_digest_is_over_pixels_not_container():
    a = _noise(50, 30, seed=11)
    im = Image.fromarray(a)
    png, webp = _enc(im, "PNG"), _enc(im, "WEBP", lossless=True)
    png_meta = _enc(im, "PNG", exif=_exif(1), pnginfo=_text_chunk())
    digests = {prepare_image(d).digest for d in (png, webp, png_meta)}
    assert len(digests) == 1 and len(next(iter(digests))) == 64
    assert prepare_rgb(a).digest in digests


def _text_chunk():
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "same pixels, different bytes")
    return info


def test_digest_changes_with_pixels_and_shape():
    a = _noise(48, 32, seed=12)
    base = prepare_rgb(a).digest
    b = a.copy()
    b[31, 47, 2] ^= 1  # one bit of one pixel
    assert prepare_rgb(b).digest != base
    same_bytes = a.reshape(16, 96, 3)  # identical bytes, another shape
    assert prepare_rgb(np.ascontiguousarray(same_bytes)).digest != base
    assert prepare_rgb(a, max_patches=2).digest != base  # same source, another grid
    assert prepare_rgb(a[::-1]).digest != base  # non-contiguous view is accepted


# ----------------------------------------------------------------------------------------------- speed


@pytest.mark.slow
def test_large_jpeg_is_fast():
    small = Image.fromarray(_noise(400, 300, seed=13)).resize((4000, 3000), Image.Resampling.BILINEAR)
    data = _enc(small, "JPEG", quality=90)
    prepare_image(data)  # warm up allocator and thread pool
    t0 = time.perf_counter()
    prepared = prepare_image(data)
    elapsed = time.perf_counter() - t0
    assert (prepared.rows, prepared.cols) == (48, 64)
    assert elapsed < 1.5, f"4000x3000 JPEG took {elapsed:.2f}s"  # ~0.25 s on 2 cores; slack for busy CI
