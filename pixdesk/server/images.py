"""Image references in a request -> PreparedImage, through `engine.prepare_image` (the only decoder).

The count is checked before any byte is decoded or fetched; data: URIs are size-checked before base64
decoding; decoding runs in a worker thread so the event loop stays responsive.
"""

from __future__ import annotations

import base64
import binascii

from starlette.concurrency import run_in_threadpool

from pixdesk.config import ImageSettings
from pixdesk.errors import ImageTooLarge, InvalidImage, PixdeskError, TooManyImages
from pixdesk.server.fetch import Fetcher
from pixdesk.server.messages import ImageRef
from pixdesk.tokenizer.image import PreparedImage


def check_count(refs: list[ImageRef], limits: ImageSettings, param: str = "messages") -> None:
    if len(refs) > limits.max_images:
        raise TooManyImages(
            f"{len(refs)} images in one request; the limit is {limits.max_images} (images.max_images)",
            param=param,
        )


def decode_data_uri(url: str, where: str, max_bytes: int) -> bytes:
    head, comma, payload = url.partition(",")
    if not comma:
        raise InvalidImage(f"{where}: a data: URI needs a comma before its data", param=where)
    meta = head[5:].strip().lower().split(";")
    mime = meta[0].strip()
    if mime and not (mime.startswith("image/") or mime == "application/octet-stream"):
        raise InvalidImage(f"{where}: the data: URI says {mime[:40]!r}, not an image type", param=where)
    if "base64" not in meta[1:]:
        raise InvalidImage(
            f"{where}: image data: URIs must be base64-encoded (data:image/png;base64,...)", param=where
        )
    if len(payload) > (-(-max_bytes // 3) * 4) * 1.05 + 1024:  # allow line breaks in the base64
        raise ImageTooLarge(
            f"{where}: the image is larger than {max_bytes} bytes (images.max_bytes)", param=where
        )
    if not payload.isascii():
        raise InvalidImage(f"{where}: the base64 data has non-ASCII characters", param=where)
    compact = "".join(payload.split()) if any(c in payload for c in " \r\n\t") else payload
    try:
        if "-" in compact or "_" in compact:
            return base64.urlsafe_b64decode(compact)
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(f"{where}: the base64 data is malformed", param=where) from None


async def prepare_images(
    refs: list[ImageRef], engine, fetcher: Fetcher, limits: ImageSettings, param: str = "messages"
) -> list[PreparedImage]:
    check_count(refs, limits, param)
    out = []
    for ref in refs:
        try:
            if ref.is_data:
                data = await run_in_threadpool(decode_data_uri, ref.url, ref.where, limits.max_bytes)
            else:
                data = await fetcher.fetch(ref.url, ref.where)
            out.append(await run_in_threadpool(engine.prepare_image, data))
        except PixdeskError as exc:
            exc.param = exc.param or ref.where
            if ref.where not in exc.message:
                exc.message = f"{ref.where}: {exc.message}"
            raise
    return out
