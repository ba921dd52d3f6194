"""What untrusted image bytes claim to be, from their first bytes alone (no decoder runs here).

Used by tokenizer/image.py before and after Pillow: the header size is checked against the pixel cap before
any decoder allocates (Pillow's WebP plugin reserves the whole image inside open()), and bytes Pillow could
not identify are told apart as "a format we refuse" (415) or "not an image at all" (400).
"""

from __future__ import annotations

import struct

# Magic bytes of formats we refuse, so a real BMP gets 415 while random bytes get 400. Pillow is never asked
# to open these (its `formats=` allow-list keeps the other plugins out); this table only names them.
OTHER_MAGIC = {
    "BMP": (b"BM",),
    "TIFF": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
    "PSD": (b"8BPS",),
    "EPS": (b"%!PS", b"\xc5\xd0\xd3\xc6"),
    "PDF": (b"%PDF",),
    "ICO": (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00"),
    "ICNS": (b"icns",),
    "DDS": (b"DDS ",),
    "FITS": (b"SIMPLE  =",),
    "JPEG 2000": (b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51"),
    "JPEG XL": (b"\x00\x00\x00\x0cJXL \r\n\x87\n", b"\xff\x0a"),
    "McIdas": (b"\x00\x00\x00\x00\x00\x00\x00\x04",),
    "QOI": (b"qoif",),
    "SGI": (b"\x01\xda",),
    "XCF": (b"gimp xcf",),
    "OpenEXR": (b"v/1\x01",),
    "Radiance HDR": (b"#?RADIANCE",),
    "BLP": (b"BLP",),
    "IFF": (b"FORM",),
}
ALLOWED_MAGIC = {"PNG": (b"\x89PNG\r\n\x1a\n",), "JPEG": (b"\xff\xd8\xff",), "GIF": (b"GIF87a", b"GIF89a")}


def sniff_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) straight from a PNG IHDR or WebP header; None for other formats or short headers."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
            w, h = struct.unpack("<HH", data[26:30])
            return w & 0x3FFF, h & 0x3FFF
        if chunk == b"VP8X":
            return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
        if chunk == b"VP8L" and data[20] == 0x2F:
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def sniff_format(data: bytes) -> tuple[str, bool] | None:
    """(format name, accepted?) from magic bytes, or None when the bytes look like no image at all."""
    for name, magics in ALLOWED_MAGIC.items():
        if data.startswith(magics):
            return name, True
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WEBP", True
    for name, magics in OTHER_MAGIC.items():
        if data.startswith(magics):
            return name, False
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"avif", b"avis"):
        return "HEIF/AVIF", False
    head = data[:256].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<svg", b"<?xml", b"<!doctype svg")):
        return "SVG", False
    if len(data) >= 3 and data[0] == ord("P") and data[1] in b"1234567" and data[2] in b" \t\r\n":
        return "PNM", False
    if _looks_like_tga(data):
        return "TGA", False
    if len(data) >= 4 and data[0] == 0x0A and data[1] in (0, 2, 3, 4, 5) and data[2] == 1 and data[3] <= 8:
        return "PCX", False
    return None


def _looks_like_tga(data: bytes) -> bool:
    # TGA has no leading magic: a v2 footer, or a plausible 18-byte header (colour map, image type, depth)
    if data.endswith(b"TRUEVISION-XFILE.\x00"):
        return True
    if len(data) < 18:
        return False
    w, h = struct.unpack("<HH", data[12:16])
    plausible = data[1] in (0, 1) and data[2] in (1, 2, 3, 9, 10, 11) and data[16] in (8, 15, 16, 24, 32)
    return plausible and w * h > 0
