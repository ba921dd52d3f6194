"""OpenAI chat messages and content parts -> typed Message / ImageRef (text parts stay str).

Image sources are `data:` URIs and http(s) URLs only: a screen/clipboard source is `capture_not_allowed`,
a `file:` URL, a path or any other scheme is `url_not_allowed` (SECURITY.md row 24). Images are allowed in
user messages only; nothing is fetched or decoded here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pixdesk.errors import CaptureNotAllowed, InvalidRequest, UrlNotAllowed
from pixdesk.server.schema import Fields, type_name

MAX_PARTS = 512
_CAPTURE = ("screen", "screenshot", "clipboard", "capture")


@dataclass(frozen=True)
class ImageRef:
    """An image named by a request, not yet fetched or decoded."""

    url: str  # a data: URI or an http(s) URL
    where: str  # field path, for errors

    @property
    def is_data(self) -> bool:
        return self.url[:5].lower() == "data:"


Part = str | ImageRef


@dataclass
class Message:
    role: str  # system | user | assistant | tool ("developer" arrives as system)
    parts: list[Part]
    plain: bool = True  # content was a plain string (parts == [that string])
    tool_calls: list[dict] = field(default_factory=list)  # assistant: OpenAI-shaped calls
    tool_call_id: str | None = None
    name: str | None = None
    prefix: bool = False


_ROLE_FIELDS = {
    "system": {"role", "content", "name"},
    "developer": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "tool_calls", "refusal", "audio", "function_call", "prefix"},
    "tool": {"role", "content", "tool_call_id"},
}


def parse_message(raw, where: str) -> Message:
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{where} must be an object, got {type_name(raw)}", param=where)
    role = raw.get("role")
    if role not in _ROLE_FIELDS:
        raise InvalidRequest(
            f"{where}.role must be one of system, developer, user, assistant, tool; got {str(role)[:40]!r}",
            param=f"{where}.role",
        )
    _refuse_capture(raw, where)
    f = Fields(raw, where, _ROLE_FIELDS[role])
    f.str("name", max_len=256)
    f.ignored("refusal")
    f.unsupported("audio", "audio in messages is not supported")
    msg = Message("system" if role == "developer" else role, [], name=f.str("name"))
    content = raw.get("content")
    if content is None:
        if role not in ("assistant",):
            raise InvalidRequest(f"{where}.content is required", param=f"{where}.content")
    elif isinstance(content, str):
        msg.parts = [content]
    elif isinstance(content, list):
        if len(content) > MAX_PARTS:
            raise InvalidRequest(f"{where}.content has more than {MAX_PARTS} parts", param=f"{where}.content")
        msg.parts = [_part(p, f"{where}.content[{j}]", images=role == "user") for j, p in enumerate(content)]
        msg.plain = False
    else:
        raise InvalidRequest(
            f"{where}.content must be a string or an array of parts", param=f"{where}.content"
        )
    if role == "assistant":
        msg.prefix = f.bool("prefix")
        msg.tool_calls = _tool_calls(f)
        if content is None and not msg.tool_calls:
            raise InvalidRequest(
                f"{where}: an assistant message needs content or tool_calls", param=f"{where}.content"
            )
    if role == "tool":
        msg.tool_call_id = f.str("tool_call_id")
        if not msg.tool_call_id:
            raise InvalidRequest(f"{where}.tool_call_id is required", param=f"{where}.tool_call_id")
    return msg


def _tool_calls(f: Fields) -> list[dict]:
    calls = f.list("tool_calls", max_items=64) or []
    if f.has("function_call"):  # deprecated single call
        calls = [*calls, {"id": "", "type": "function", "function": f.raw("function_call")}]
    out = []
    for k, call in enumerate(calls):
        cf = Fields(call, f"{f.where('tool_calls')}[{k}]", {"id", "type", "function"})
        cf.choice("type", ("function",), "function")
        fn = Fields(cf.raw("function"), cf.where("function"), {"name", "arguments"})
        name = fn.str("name")
        if not name:
            raise InvalidRequest(f"{fn.where('name')} is required", param=fn.where("name"))
        out.append(
            {"id": cf.str("id", ""), "name": name, "arguments": fn.str("arguments", "{}", max_len=1 << 20)}
        )
    return out


def _part(raw, where: str, *, images: bool) -> Part:
    if isinstance(raw, dict):
        _refuse_capture(raw, where)
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "text":
        f = Fields(raw, where, {"type", "text"})
        text = f.raw("text")
        if not isinstance(text, str):
            raise InvalidRequest(f"{where}.text must be a string", param=f"{where}.text")
        return text
    if kind == "refusal":
        return Fields(raw, where, {"type", "refusal"}).str("refusal", "", max_len=1 << 20)
    if kind == "image_url":
        f = Fields(raw, where, {"type", "image_url"})
        if not images:
            raise InvalidRequest(f"{where}: images are only allowed in user messages", param=where)
        spec = f.raw("image_url")
        if isinstance(spec, dict):
            sf = Fields(spec, f"{where}.image_url", {"url", "detail"})
            sf.choice("detail", ("auto", "low", "high"))  # accepted; Pixtral sees every image at full detail
            url = spec.get("url")
            where = f"{where}.image_url.url"
        else:
            url, where = spec, f"{where}.image_url"
        return image_ref(url, where)
    if kind in ("input_audio", "file", "input_file"):
        raise InvalidRequest(
            f"{where}.type {kind!r} is not supported; send text and images", param=f"{where}.type"
        )
    raise InvalidRequest(f"{where} must be a text or image_url part", param=f"{where}.type")


def _refuse_capture(raw: dict, where: str) -> None:
    """Row 24: HTTP requests carry image data or URLs; never a capture source or a local path."""
    source = raw.get("source")
    if raw.get("type") in _CAPTURE or source in _CAPTURE:
        raise CaptureNotAllowed(
            f"{where}: screen and clipboard capture is not available over HTTP; capture on the client "
            "(pixdesk snap / ask --screenshot) and send the image data",
            param=where,
        )
    if source in ("file", "path") or "path" in raw:
        raise UrlNotAllowed(
            f"{where}: local files are not read over HTTP; send the image as a data: URI", param=where
        )


def image_ref(url, where: str) -> ImageRef:
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"{where} must be a data: URI or an http(s) URL", param=where)
    scheme = url.split(":", 1)[0].lower() if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", url) else ""
    if scheme in _CAPTURE:
        raise CaptureNotAllowed(f"{where}: capture sources are not available over HTTP", param=where)
    if scheme not in ("data", "http", "https"):
        raise UrlNotAllowed(
            f"{where}: only data: URIs and http(s) URLs are accepted; local files and other schemes "
            f"({scheme + ':' if scheme else 'a path'}) are read by client processes, never by the daemon",
            param=where,
        )
    if scheme != "data" and len(url) > 8192:
        raise UrlNotAllowed(f"{where}: the URL is longer than 8192 characters", param=where)
    return ImageRef(url, where)
