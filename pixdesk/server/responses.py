"""HTTP shapes shared by guards and routes: JSON bodies, error responses (the error table's HTTP column)."""

from __future__ import annotations

import json

from starlette.responses import Response

from pixdesk.errors import InvalidApiKey, ModelLoading, Overloaded, PixdeskError

JSON_TYPE = "application/json"


def dumps(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


class JSON(Response):
    media_type = JSON_TYPE

    def render(self, content) -> bytes:
        return dumps(content)


def error_response(exc: PixdeskError, *, close: bool = False) -> Response:
    """The OpenAI-shaped body and the status, plus the headers some statuses need (never a traceback)."""
    headers = {}
    if isinstance(exc, InvalidApiKey):
        headers["WWW-Authenticate"] = 'Bearer realm="pixdesk"'
    if isinstance(exc, (Overloaded, ModelLoading)):
        headers["Retry-After"] = str(exc.retry_after)
    if close:
        headers["Connection"] = "close"
    return JSON(exc.to_dict(), status_code=exc.http_status, headers=headers)
