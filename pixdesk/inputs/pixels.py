"""What the inputs hand over: encoded images (bytes + mime) and, inside the package, captured RGB pixels.

Only captured pixels are ever encoded here (Pillow as a PNG encoder). Untrusted image bytes are never decoded
in pixdesk.inputs: they are sniffed by their magic bytes and handed on to tokenizer/image.py.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from pixdesk.errors import InvalidImage, UnsupportedImageFormat

from .errors import CaptureFailed, FileTooLarge

DEFAULT_MAX_BYTES = 32 * 1024 * 1024  # = ImageSettings.max_bytes; callers pass the configured value
ACCEPTED_MIMES = ("image/png", "image/jpeg", "image/webp", "image/gif")  # what tokenizer/image.py decodes
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Rect:
    """A rectangle in screen (or capture) pixels."""

    x: int
    y: int
    w: int
    h: int

    def intersect(self, other: Rect) -> Rect | None:
        x0, y0 = max(self.x, other.x), max(self.y, other.y)
        x1, y1 = min(self.x + self.w, other.x + other.w), min(self.y + self.h, other.y + other.h)
        return Rect(x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None


@dataclass(frozen=True)
class ImageBytes:
    data: bytes
    mime: str

    def __repr__(self) -> str:  # never dump megabytes into a log line
        return f"ImageBytes(mime={self.mime!r}, {len(self.data)} bytes)"


@dataclass(frozen=True)
class RawImage:
    """Captured pixels, RGB, 3 bytes per pixel, rows top to bottom."""

    rgb: bytes
    width: int
    height: int

    def __post_init__(self) -> None:
        if len(self.rgb) != self.width * self.height * 3:
            raise CaptureFailed(
                f"captured buffer has {len(self.rgb)} bytes, expected {self.width}x{self.height}x3"
            )

    def __repr__(self) -> str:
        return f"RawImage({self.width}x{self.height})"


def encode_png(raw: RawImage, box: Rect | None = None, *, compress_level: int = 3) -> bytes:
    """PNG of the captured pixels, or of `box` (inside the capture) only."""
    from PIL import Image  # encoder only; imported late so that files/clipboard work without it loaded

    im = Image.frombuffer("RGB", (raw.width, raw.height), raw.rgb, "raw", "RGB", 0, 1)
    if box is not None:
        im = im.crop((box.x, box.y, box.x + box.w, box.y + box.h))
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def sniff_mime(data: bytes) -> str | None:
    """The image mime type by magic bytes (never by name), or None when it is not a known image."""
    if data.startswith(PNG_MAGIC):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:2] == b"BM":
        return "image/bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    return None


def accepted_image(data: bytes, what: str) -> ImageBytes:
    """`data` as ImageBytes when its magic bytes are an accepted image format; else a typed error."""
    mime = sniff_mime(data)
    if not data:
        raise InvalidImage(f"{what} is empty")
    if mime is None:
        raise InvalidImage(f"{what} is not an image (expected PNG, JPEG, WebP or GIF)")
    if mime not in ACCEPTED_MIMES:
        raise UnsupportedImageFormat(f"{what} is {mime}; pixdesk accepts PNG, JPEG, WebP and GIF")
    return ImageBytes(data, mime)


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR header, without decoding; None when it is no PNG."""
    if len(data) < 24 or not data.startswith(PNG_MAGIC) or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def parse_ppm(data: bytes) -> RawImage:
    """Binary PPM (P6, maxval 255) as written by `grim -t ppm`: a text header, then raw RGB rows."""
    fields: list[bytes] = []
    pos = 0
    while len(fields) < 4:
        while pos < len(data) and data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":  # comment up to the end of the line
            pos = data.find(b"\n", pos)
            if pos < 0:
                break
            continue
        end = pos
        while end < len(data) and not data[end : end + 1].isspace():
            end += 1
        if end == pos:
            break
        fields.append(data[pos:end])
        pos = end
    if (
        len(fields) < 4
        or fields[0] != b"P6"
        or fields[3] != b"255"
        or not all(f.isdigit() for f in fields[1:])
    ):
        raise CaptureFailed("the capture tool did not write a binary PPM (P6, 8 bits)")
    width, height = int(fields[1]), int(fields[2])
    body = data[pos + 1 : pos + 1 + width * height * 3]  # exactly one whitespace byte ends the header
    return RawImage(body, width, height)


def check_size(data: bytes, max_bytes: int, what: str, hint: str = "") -> bytes:
    if len(data) > max_bytes:
        raise FileTooLarge(f"{what} is {len(data)} bytes, over the {max_bytes}-byte image cap{hint}")
    return data
