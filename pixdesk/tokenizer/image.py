"""Untrusted image bytes -> normalized pixel tensor, patch grid and content digest.

The only module that calls Pillow. Decoding follows mistral_common 1.13.1 (the oracle, PIXTRAL.md §4) except
where PIXTRAL.md §10 says pixdesk differs on purpose: EXIF orientation is applied, 16-bit images are scaled
(not clipped) to 8 bits, and resampling uses torch's bicubic (same a = -0.75 kernel as OpenCV INTER_CUBIC).
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from pixdesk.errors import ImageTooLarge, InvalidConfig, InvalidImage, UnsupportedImageFormat
from pixdesk.tokenizer.sniff import sniff_format, sniff_size

IMG_ID = 10
IMG_BREAK_ID = 12
IMG_END_ID = 13

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # RGB
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)  # RGB
_DIGEST_TAG = b"pixdesk-image-v1"  # bump when decode or resampling changes what a digest stands for
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ORIENTATION_TAG = 0x0112
_EXIF_TRANSPOSE = {  # EXIF orientation -> Pillow transpose, the table ImageOps.exif_transpose uses
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def image_token_ids(rows: int, cols: int) -> list[int]:
    """`([IMG] * cols + [IMG_BREAK]) * rows` with the very last [IMG_BREAK] replaced by [IMG_END]."""
    ids: list[int] = []
    for _ in range(rows):
        ids.extend([IMG_ID] * cols)
        ids.append(IMG_BREAK_ID)
    ids[-1] = IMG_END_ID
    return ids


@dataclass(frozen=True, eq=False)
class PreparedImage:
    pixels: torch.Tensor  # float32 (3, H, W), CLIP-normalized; H = rows * patch, W = cols * patch
    rows: int  # patches per column (H_t)
    cols: int  # patches per row (W_t)
    digest: str  # sha256 hex over the decoded RGB pixels and the target grid
    source_size: tuple[int, int]  # (width, height) after decode and EXIF transpose

    @property
    def n_patches(self) -> int:
        return self.rows * self.cols

    def token_ids(self) -> list[int]:
        return image_token_ids(self.rows, self.cols)


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 32 * 1024 * 1024  # encoded size cap
    max_pixels: int = 64_000_000  # header w*h cap, checked before load(); Pillow's 89.5 Mpx caps it too
    max_frames_scanned: int = 1  # only frame 0 is decoded; frames are never iterated (decode time is bounded)

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1:
            raise InvalidConfig("images.max_bytes and images.max_pixels must be at least 1")
        if self.max_frames_scanned != 1:
            raise InvalidConfig("images.max_frames_scanned must be 1: pixdesk decodes only the first frame")


# ----------------------------------------------------------------------------------------------- geometry


def target_grid(
    width: int,
    height: int,
    *,
    patch_size: int = 16,
    max_image_size: int = 1024,
    max_patches: int | None = None,
) -> tuple[int, int]:
    """Patch grid (rows, cols) for a width x height image; the image is resized to (rows*patch, cols*patch).

    mistral_common's rule (PIXTRAL.md §4 step 3): shrink so the longer side fits max_image_size, rounding each
    side half-to-even (at least 1 px), then ceil each side to whole patches. 1500x1001 -> ratio 1.465 ->
    1024x683 -> cols 64, rows 43 (2752 patches).

    `max_patches` then caps rows*cols by shrinking uniformly: with fw = w/patch and fh = h/patch fractional
    patches, scale s gives the grid (ceil(s*fw), ceil(s*fh)). That grid only changes where s*fw or s*fh
    crosses an integer, so the largest s that fits is one of s = c/fw (exactly c columns, rows =
    ceil(c*h/w)) or s = r/fh (exactly r rows, cols = ceil(r*w/h)); we take the largest fitting candidate.
    Example, 1024x683 with max_patches=1024: c=38 gives 38x26=988 at s=0.594, r=26 gives cols
    ceil(26*1024/683)=39 -> 39x26=1014 at s=0.609, and the next candidates (39x27, 41x27) exceed 1024,
    so the grid is rows 26, cols 39.
    """
    _check_geometry(patch_size, max_image_size, max_patches)
    if width < 1 or height < 1:
        raise InvalidImage(f"image is {width}x{height}; width and height must be at least 1 pixel")
    w, h = width, height
    ratio = max(w / max_image_size, h / max_image_size)
    if ratio > 1:
        w, h = max(round(w / ratio), 1), max(round(h / ratio), 1)
    cols, rows = -(-w // patch_size), -(-h // patch_size)
    if max_patches is not None and rows * cols > max_patches:
        rows, cols = _fit_budget(w, h, rows, cols, max_patches)
    return rows, cols


def _check_geometry(patch_size: int, max_image_size: int, max_patches: int | None) -> None:
    if patch_size < 1 or max_image_size < 1:
        raise InvalidConfig(f"patch_size ({patch_size}) and max_image_size ({max_image_size}) must be >= 1")
    if max_patches is not None and max_patches < 1:
        raise InvalidConfig(f"max_patches is {max_patches}; set it to at least 1 (or leave it unset)")


def _fit_budget(w: int, h: int, rows: int, cols: int, budget: int) -> tuple[int, int]:
    """Largest uniform shrink of a w x h image whose grid fits `budget` patches (see target_grid)."""
    # candidate scales as exact fractions num/den of "s * patch": c/fw = c*patch/w, r/fh = r*patch/h;
    # the common patch factor cancels when comparing, so compare c/w against r/h by cross-multiplying
    best: tuple[int, int, int, int] | None = None  # (num, den, rows, cols)
    cands = [(c, w, -(-c * h // w), c) for c in range(1, cols + 1)]
    cands += [(r, h, r, -(-r * w // h)) for r in range(1, rows + 1)]
    for num, den, r, c in cands:
        if r * c <= budget and (best is None or num * best[1] > best[0] * den):
            best = (num, den, r, c)
    assert best is not None  # the one-patch-thick side always fits: budget >= 1
    return best[2], best[3]


# ----------------------------------------------------------------------------------------------- decoding


def decode_image(data: bytes, *, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Untrusted bytes -> RGB uint8 image: frame 0, EXIF-upright, 16-bit scaled, transparency on white."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidImage(f"image must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise InvalidImage("image is empty (0 bytes); send a PNG, JPEG, WebP or GIF file")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(
            f"image is {_fmt_bytes(len(data))} encoded; the limit is {_fmt_bytes(limits.max_bytes)} "
            "(send a smaller file or set images.max_bytes)"
        )
    if (size := sniff_size(data)) is not None:
        _check_size(size, limits)  # before Pillow: its WebP decoder allocates the canvas inside open()
    im = _open_and_load(data, limits)
    im = _to_8bit(im)
    im = _upright(im)
    return _to_rgb(im)


def _open_and_load(data: bytes, limits: ImageLimits) -> Image.Image:
    # catch_warnings is local (no global Pillow setting); it makes Pillow's own bomb warning an error
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except UnidentifiedImageError:
            raise _unidentified(data) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise _too_large_from_pillow(e) from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError) as e:
            raise _corrupt(data, e) from None
        _check_size(im.size, limits)  # header only so far: nothing decoded, nothing allocated
        try:
            im.load()  # frame 0 only; frames are never iterated
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise _too_large_from_pillow(e) from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError) as e:
            raise _corrupt(data, e) from None
    return im


def _check_size(size: tuple[int, int], limits: ImageLimits) -> None:
    w, h = size
    if w < 1 or h < 1 or w >= 2**31 or h >= 2**31:
        raise InvalidImage(f"image header says {w}x{h}; width and height must be 1..2^31-1 pixels")
    if w * h > limits.max_pixels:
        raise ImageTooLarge(
            f"image is {w}x{h} = {_fmt_px(w * h)}; the limit is {_fmt_px(limits.max_pixels)} "
            "(downscale the image or set images.max_pixels)"
        )


def _too_large_from_pillow(e: Exception) -> ImageTooLarge:
    # Pillow's own bomb check fires inside open() (e.g. a GIF frame far larger than its canvas) and caps
    # images.max_pixels too: pixdesk never raises Image.MAX_IMAGE_PIXELS, a process-wide setting
    cap = _fmt_px(Image.MAX_IMAGE_PIXELS or 0)
    return ImageTooLarge(
        f"image is too large to decode safely ({e}); downscale it below {cap} "
        "(Pillow's limit, which applies whatever images.max_pixels says)"
    )


def _unidentified(data: bytes) -> InvalidImage | UnsupportedImageFormat:
    sniffed = sniff_format(data)
    if sniffed is None:
        return InvalidImage("image bytes are not a PNG, JPEG, WebP or GIF file (unrecognized header)")
    name, accepted = sniffed
    if accepted:
        return InvalidImage(f"image is a corrupt {name} file (its header cannot be read); re-encode it")
    return UnsupportedImageFormat(f"image format {name} is not accepted; convert it to PNG, JPEG, WebP, GIF")


def _corrupt(data: bytes, e: Exception) -> InvalidImage:
    name = (sniff_format(data) or ("image", True))[0]
    detail = str(e)[:200] or type(e).__name__
    return InvalidImage(f"image is a corrupt or truncated {name} file ({detail}); re-send the complete file")


# ----------------------------------------------------------------------------------------------- pixel modes


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit grey (also I/F) -> L by scaling 0..65535 onto 0..255; Pillow's convert would clip instead."""
    if im.mode not in _SIXTEEN_BIT_MODES:
        return im
    raw = np.asarray(im)
    if raw.dtype.kind == "f":  # F: no allowed format produces it, but NaN must not reach astype
        raw = np.nan_to_num(raw)
    wide = np.clip(raw, 0, 65535).astype(np.uint32)  # I (int32) may be negative or above 16 bits
    grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)  # round half up; x*255 fits in uint32
    transparent = im.info.get("transparency")
    if isinstance(transparent, int):  # 16-bit tRNS: one exact grey value is see-through
        alpha = np.where(raw == transparent, 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([grey, alpha], axis=-1))  # (H, W, 2) uint8 -> LA
    return Image.fromarray(grey)  # (H, W) uint8 -> L


def _upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (mistral_common ignores it; PIXTRAL.md §10)."""
    try:
        orientation = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # Pillow's EXIF parser raises many types; bad metadata just means "no orientation"
        return im
    method = _EXIF_TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    return im if method is None else im.transpose(method)


def _to_rgb(im: Image.Image) -> Image.Image:
    """mistral_common's _convert_to_rgb: RGB passes; anything else -> RGBA pasted on opaque white -> RGB."""
    if im.mode == "RGB":
        return im
    try:
        rgba = im if im.mode == "RGBA" else im.convert("RGBA")
    except ValueError as e:
        raise UnsupportedImageFormat(f"image pixel mode {im.mode} cannot be converted to RGB ({e})") from None
    if rgba.getchannel("A").getextrema() == (255, 255):
        return rgba.convert("RGB")  # fully opaque: pasting would copy every pixel unchanged
    canvas = Image.new("RGBA", rgba.size, "WHITE")
    canvas.paste(rgba, (0, 0), rgba)  # the exact call mistral_common makes, so rounding matches
    return canvas.convert("RGB")


# ----------------------------------------------------------------------------------------------- tensors


def prepare_image(
    data: bytes,
    *,
    patch_size: int = 16,
    max_image_size: int = 1024,
    max_patches: int | None = None,
    limits: ImageLimits = ImageLimits(),
) -> PreparedImage:
    """Untrusted image bytes -> PreparedImage (decode_image, then prepare_rgb)."""
    _check_geometry(patch_size, max_image_size, max_patches)  # config errors before any decode work
    rgb = np.asarray(decode_image(data, limits=limits))  # (H, W, 3) uint8
    return prepare_rgb(rgb, patch_size=patch_size, max_image_size=max_image_size, max_patches=max_patches)


def prepare_rgb(
    rgb: np.ndarray, *, patch_size: int = 16, max_image_size: int = 1024, max_patches: int | None = None
) -> PreparedImage:
    """Decoded (H, W, 3) uint8 RGB -> resized, CLIP-normalized float32 (3, rows*patch, cols*patch)."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = getattr(rgb, "shape", None)
        raise InvalidImage(f"expected an (H, W, 3) uint8 RGB array, got {type(rgb).__name__} {shape}")
    h, w = rgb.shape[:2]
    grid = {"patch_size": patch_size, "max_image_size": max_image_size, "max_patches": max_patches}
    rows, cols = target_grid(w, h, **grid)
    rgb = np.ascontiguousarray(rgb)
    return PreparedImage(
        pixels=_resize_normalize(rgb, rows * patch_size, cols * patch_size),
        rows=rows,
        cols=cols,
        digest=_digest(rgb, rows, cols, patch_size),
        source_size=(w, h),
    )


def _digest(rgb: np.ndarray, rows: int, cols: int, patch_size: int) -> str:
    # pixels only, never container bytes: the same picture as PNG or lossless WebP, with or without metadata,
    # shares a digest; the header pins the shape, so equal bytes in another shape still differ
    h, w = rgb.shape[:2]
    sha = hashlib.sha256(_DIGEST_TAG + struct.pack("<5Q", w, h, rows, cols, patch_size))
    sha.update(memoryview(rgb).cast("B"))
    return sha.hexdigest()


def _resize_normalize(rgb: np.ndarray, height: int, width: int) -> torch.Tensor:
    # float32 in 0..255 like mistral_common's cv2.resize input; (1, 3, H, W) view with channels-last strides
    src = torch.empty(rgb.shape, dtype=torch.float32)
    np.copyto(src.numpy(), rgb, casting="unsafe")  # torch.from_numpy would warn on a read-only Pillow buffer
    x = src.permute(2, 0, 1).unsqueeze(0)
    if (height, width) != tuple(rgb.shape[:2]):
        # torch and OpenCV both use a = -0.75 and clamp-to-edge borders; no clipping of the overshoot
        x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=False)
    x = x[0].contiguous()  # (3, H, W)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1)
    return x.div_(255.0).sub_(mean).div_(std)  # same op order as mistral_common's normalize


def _fmt_px(n: int) -> str:
    if n >= 10**9:
        return f"{n / 1e9:.3g} Gpx"
    if n >= 10**6:
        return f"{n / 1e6:.3g} Mpx"
    return f"{n} px"


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.3g} MiB" if n >= 2**20 else f"{n} bytes"
