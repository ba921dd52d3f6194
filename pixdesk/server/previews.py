"""HTML previews for the chat page, served with their own sandbox CSP.

A `srcdoc` or blob frame inherits the page's strict CSP, so a generated page's inline <style> never applies.
Instead the page posts the document here and frames `/preview/{id}`: that response carries
`Content-Security-Policy: sandbox allow-scripts; ...` (an opaque origin: no cookie, no API, no access to the
page) and allows inline styles and scripts but no network at all. Documents live in memory only (SECURITY
row 32), at most 16 of them for an hour, and are never logged.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from pixdesk.errors import InvalidRequest, NotFound
from pixdesk.server.chat import read_json
from pixdesk.server.responses import JSON
from pixdesk.server.schema import Fields

PREVIEW_CSP = (
    "sandbox allow-scripts; default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "img-src data: blob:; font-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
)
MAX_HTML = 2 * 2**20


class PreviewStore:
    def __init__(self, capacity: int = 16, ttl_s: float = 3600.0):
        self.capacity, self.ttl_s = capacity, ttl_s
        self.items: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def put(self, html: str) -> str:
        key = secrets.token_urlsafe(16)
        self.items[key] = (time.monotonic(), html)
        while len(self.items) > self.capacity:
            self.items.popitem(last=False)
        return key

    def get(self, key: str) -> str | None:
        item = self.items.get(key)
        if item is None or time.monotonic() - item[0] > self.ttl_s:
            self.items.pop(key, None)
            return None
        return item[1]


async def create_preview(request: Request) -> Response:
    f = Fields(await read_json(request), "", {"html"})
    html = f.str("html", max_len=MAX_HTML)
    if not html:
        raise InvalidRequest('send {"html": "<!doctype html>..."}', param="html")
    key = request.app.state.ctx.previews.put(html)
    return JSON({"id": key, "url": f"/preview/{key}"})


async def show_preview(request: Request) -> Response:
    html = request.app.state.ctx.previews.get(request.path_params["key"])
    if html is None:
        raise NotFound("this preview expired or never existed; open it again from the chat page")
    return HTMLResponse(
        html,
        headers={
            "content-security-policy": PREVIEW_CSP,
            "x-frame-options": "SAMEORIGIN",
            "cache-control": "no-store",
            "cross-origin-resource-policy": "same-origin",
        },
    )
