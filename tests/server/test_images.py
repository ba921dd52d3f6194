"""SECURITY.md rows 13-17 through HTTP: the daemon answers hostile images with the right status and code,
decodes nothing it refuses, and stays up. (tests/tokenizer/test_image.py covers the decoder itself.)"""

from __future__ import annotations

import io
import os
import struct
import zlib

import pytest
from PIL import Image

from tests.server.conftest import data_uri, png


def _chunk(tag: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))


def png_header(w: int, h: int, rows: int = 4) -> bytes:
    """A PNG that claims w x h; only a few rows of (zero) pixel data follow."""
    idat = zlib.compress(b"\x00" * (rows * (w + 1)), 9)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def gif_frame_over_canvas(canvas=(10, 10), frame=(40000, 40000)) -> bytes:
    screen = struct.pack("<HHBBB", *canvas, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    return b"GIF89a" + screen + b"," + struct.pack("<HHHHB", 0, 0, *frame, 0) + b"\x02\x4c\x01\x00;"


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def ask(live, data: bytes, mime="image/png"):
    before = live.counters()
    part = {"type": "image_url", "image_url": {"url": data_uri(data, mime)}}
    status, _, out = live.request(
        "POST",
        "/v1/chat/completions",
        {
            "model": "m",
            "max_tokens": 1,
            "temperature": 0,
            "messages": [{"role": "user", "content": [part, {"type": "text", "text": "What is it?"}]}],
        },
    )
    return status, out, before


def refused(live, data, status, code, mime="image/png"):
    got, out, before = ask(live, data, mime)
    assert (got, out["error"]["code"]) == (status, code), out
    assert out["error"]["param"].startswith("messages[0].content[0]")
    assert live.counters() == before  # nothing queued, nothing encoded
    live.assert_ok_after()


def test_decompression_bombs(live):
    bomb = png_header(50_000, 50_000)
    assert len(bomb) < 200_000
    refused(live, bomb, 413, "image_too_large")
    refused(live, gif_frame_over_canvas(), 413, "image_too_large", "image/gif")
    refused(live, b"\x00" * (300 * 1024), 413, "image_too_large")  # over images.max_bytes (256 KiB here)


@pytest.mark.parametrize("name", ["truncated_png", "truncated_jpeg", "random", "zero_width", "text_as_png"])
def test_corrupt_images(live, name):
    good_png, good_jpeg = png(64, 64), encode(Image.new("RGB", (64, 64), "red"), "JPEG")
    data = {
        "truncated_png": good_png[: len(good_png) // 2],
        "truncated_jpeg": good_jpeg[: len(good_jpeg) // 2],
        "random": os.urandom(4096),
        "zero_width": png_header(0, 10),
        "text_as_png": b"hello, I am not an image",
    }[name]
    refused(live, data, 400, "invalid_image")


@pytest.mark.parametrize("fmt", ["TGA", "PSD", "PDF", "EPS", "SVG", "BMP", "TIFF", "ICNS", "JPEG2000"])
def test_disallowed_formats(live, fmt):
    data = {
        "TGA": lambda: encode(Image.new("RGB", (8, 8)), "TGA"),
        "PSD": lambda: b"8BPS\x00\x01" + b"\x00" * 64,
        "PDF": lambda: encode(Image.new("RGB", (8, 8)), "PDF"),
        "EPS": lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n",
        "SVG": lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>',
        "BMP": lambda: encode(Image.new("RGB", (8, 8)), "BMP"),
        "TIFF": lambda: encode(Image.new("RGB", (8, 8)), "TIFF"),
        "ICNS": lambda: b"icns\x00\x00\x00\x08",
        "JPEG2000": lambda: b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00" * 32,
    }[fmt]()
    refused(live, data, 415, "unsupported_image_format")


def _exif_rotated(w, h) -> bytes:
    im = Image.new("RGB", (w, h), "blue")
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(im, "JPEG", exif=exif.tobytes())


@pytest.mark.parametrize(
    "case",
    [
        "1x1",
        "1x4000",
        "4000x1",
        "3x3_exif",
        "cmyk_jpeg",
        "png16",
        "palette_alpha",
        "la",
        "animated_gif",
        "webp",
    ],
)
def test_odd_geometry_and_pixel_formats_are_answered(live, case):
    data = {
        "1x1": lambda: png(1, 1),
        "1x4000": lambda: encode(Image.new("L", (1, 4000), 7), "PNG"),
        "4000x1": lambda: encode(Image.new("L", (4000, 1), 7), "PNG"),
        "3x3_exif": lambda: _exif_rotated(3, 3),
        "cmyk_jpeg": lambda: encode(Image.new("CMYK", (20, 20), (0, 50, 100, 0)), "JPEG"),
        "png16": lambda: encode(Image.new("I;16", (20, 20), 40000), "PNG"),
        "palette_alpha": lambda: encode(Image.new("P", (20, 20), 1), "PNG", transparency=1),
        "la": lambda: encode(Image.new("LA", (20, 20), (100, 50)), "PNG"),
        "animated_gif": lambda: encode(
            Image.new("P", (16, 16), 0),
            "GIF",
            save_all=True,
            append_images=[Image.new("P", (16, 16), i % 255) for i in range(1, 300)],
        ),
        "webp": lambda: encode(Image.new("RGB", (30, 20), "green"), "WEBP"),
    }[case]()
    status, out, before = ask(live, data)
    assert status == 200, out
    assert live.counters()["vision_calls"] <= before["vision_calls"] + 1
