"""The PixdeskError family: one table maps each stable `error.code` to its HTTP status and JSON-RPC code.

Every error a user can trigger is one of these, with a message that says what to change. Servers translate
them with `http_status` / `jsonrpc_code` / `mcp`; nothing else in the package decides a status.
JSON-RPC codes sit in -32000..-32099 minus the part MCP reserves (-32000..-32002 are left alone), plus the
JSON-RPC standard -32602 / -32603. docs/errors.md shows the same table (a test keeps the two in step).

MCP form: "tool" errors come back as a tool result with `isError: true` whose text is the message and whose
`structuredContent` is the OpenAI-shaped error body; "protocol" errors are JSON-RPC errors (the request
itself is malformed); "http" errors exist only on the HTTP transport (host, origin, key, body framing).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorKind:
    code: str
    http_status: int
    jsonrpc_code: int
    type: str  # OpenAI-shaped `error.type`
    mcp: str = "tool"  # "tool" (isError result) | "protocol" (JSON-RPC error) | "http" (HTTP transport only)


_KINDS = [
    # request shape and values
    ErrorKind("invalid_request", 400, -32602, "invalid_request_error"),
    ErrorKind("context_length_exceeded", 400, -32010, "invalid_request_error"),
    ErrorKind("invalid_image", 400, -32011, "invalid_request_error"),
    ErrorKind("image_too_large", 413, -32012, "invalid_request_error"),
    ErrorKind("unsupported_image_format", 415, -32013, "invalid_request_error"),
    ErrorKind("too_many_images", 413, -32014, "invalid_request_error"),
    ErrorKind("image_token_mismatch", 400, -32015, "invalid_request_error"),
    # checkpoints and configuration
    ErrorKind("invalid_config", 400, -32020, "invalid_request_error"),
    ErrorKind("invalid_checkpoint", 400, -32021, "invalid_request_error"),
    ErrorKind("model_not_found", 404, -32022, "invalid_request_error"),
    # tokenizer
    ErrorKind("tokenizer_error", 500, -32030, "server_error"),
    # engine
    ErrorKind("overloaded", 429, -32040, "rate_limit_error"),
    ErrorKind("cancelled", 499, -32041, "invalid_request_error"),
    ErrorKind("internal_error", 500, -32603, "server_error"),
    ErrorKind("model_loading", 503, -32042, "server_error"),
    ErrorKind("model_unavailable", 503, -32043, "server_error"),
    ErrorKind("shutting_down", 503, -32044, "server_error"),
    # HTTP transport: who may call, and how the request is framed
    ErrorKind("host_not_allowed", 403, -32050, "invalid_request_error", "http"),
    ErrorKind("origin_not_allowed", 403, -32051, "invalid_request_error", "http"),
    ErrorKind("invalid_api_key", 401, -32052, "authentication_error", "http"),
    ErrorKind("invalid_login_code", 401, -32053, "authentication_error", "http"),
    ErrorKind("unsupported_media_type", 415, -32054, "invalid_request_error", "http"),
    ErrorKind("request_too_large", 413, -32055, "invalid_request_error", "http"),
    ErrorKind("headers_too_large", 431, -32056, "invalid_request_error", "http"),
    ErrorKind("request_timeout", 408, -32057, "invalid_request_error", "http"),
    ErrorKind("not_found", 404, -32058, "invalid_request_error", "protocol"),
    ErrorKind("method_not_allowed", 405, -32059, "invalid_request_error", "http"),
    # image sources
    ErrorKind("url_not_allowed", 400, -32060, "invalid_request_error"),
    ErrorKind("url_fetch_disabled", 403, -32061, "invalid_request_error"),
    ErrorKind("url_fetch_failed", 400, -32062, "invalid_request_error"),
    ErrorKind("url_fetch_timeout", 504, -32063, "server_error"),
    ErrorKind("capture_not_allowed", 400, -32064, "invalid_request_error"),
    # desktop inputs, read by client processes (CLI, stdio bridge, MCP server)
    ErrorKind("path_not_allowed", 403, -32065, "invalid_request_error"),
    ErrorKind("not_a_regular_file", 400, -32066, "invalid_request_error"),
    ErrorKind("capture_unavailable", 503, -32067, "server_error"),
    ErrorKind("capture_failed", 500, -32068, "server_error"),
    ErrorKind("clipboard_empty", 400, -32069, "invalid_request_error"),
]
KINDS: dict[str, ErrorKind] = {k.code: k for k in _KINDS}


class PixdeskError(Exception):
    """Base of every user-facing error. `code` selects a row of KINDS."""

    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if self.code not in KINDS:
            raise ValueError(f"unknown error code {self.code!r}")

    @property
    def kind(self) -> ErrorKind:
        return KINDS[self.code]

    @property
    def http_status(self) -> int:
        return self.kind.http_status

    @property
    def jsonrpc_code(self) -> int:
        return self.kind.jsonrpc_code

    def to_dict(self) -> dict:
        """OpenAI-shaped error body (no traceback, ever)."""
        return {
            "error": {
                "message": self.message,
                "type": self.kind.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(PixdeskError):
    code = "invalid_request"


class ContextLengthExceeded(PixdeskError):
    code = "context_length_exceeded"


class InvalidImage(PixdeskError):
    code = "invalid_image"


class ImageTooLarge(PixdeskError):
    code = "image_too_large"


class UnsupportedImageFormat(PixdeskError):
    code = "unsupported_image_format"


class TooManyImages(PixdeskError):
    code = "too_many_images"


class ImageTokenMismatch(PixdeskError):
    code = "image_token_mismatch"


class InvalidConfig(PixdeskError):
    code = "invalid_config"


class InvalidCheckpoint(PixdeskError):
    code = "invalid_checkpoint"


class ModelNotFound(PixdeskError):
    code = "model_not_found"


class TokenizerError(PixdeskError):
    code = "tokenizer_error"


class Overloaded(PixdeskError):
    code = "overloaded"

    def __init__(self, message: str, *, retry_after: int = 1, **kw):
        super().__init__(message, **kw)
        self.retry_after = retry_after  # seconds, for the HTTP Retry-After header


class Cancelled(PixdeskError):
    code = "cancelled"


class InternalError(PixdeskError):
    code = "internal_error"


class ModelLoading(PixdeskError):
    code = "model_loading"

    def __init__(self, message: str, *, retry_after: int = 5, **kw):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ModelUnavailable(PixdeskError):
    code = "model_unavailable"


class ShuttingDown(PixdeskError):
    code = "shutting_down"


class HostNotAllowed(PixdeskError):
    code = "host_not_allowed"


class OriginNotAllowed(PixdeskError):
    code = "origin_not_allowed"


class InvalidApiKey(PixdeskError):
    code = "invalid_api_key"


class InvalidLoginCode(PixdeskError):
    code = "invalid_login_code"


class UnsupportedMediaType(PixdeskError):
    code = "unsupported_media_type"


class RequestTooLarge(PixdeskError):
    code = "request_too_large"


class HeadersTooLarge(PixdeskError):
    code = "headers_too_large"


class RequestTimeout(PixdeskError):
    code = "request_timeout"


class NotFound(PixdeskError):
    code = "not_found"


class MethodNotAllowed(PixdeskError):
    code = "method_not_allowed"


class UrlNotAllowed(PixdeskError):
    code = "url_not_allowed"


class UrlFetchDisabled(PixdeskError):
    code = "url_fetch_disabled"


class UrlFetchFailed(PixdeskError):
    code = "url_fetch_failed"


class UrlFetchTimeout(PixdeskError):
    code = "url_fetch_timeout"


class CaptureNotAllowed(PixdeskError):
    code = "capture_not_allowed"


class PathNotAllowed(PixdeskError):
    code = "path_not_allowed"


class NotARegularFile(PixdeskError):
    code = "not_a_regular_file"


class CaptureUnavailable(PixdeskError):
    code = "capture_unavailable"


class CaptureFailed(PixdeskError):
    code = "capture_failed"


class ClipboardEmpty(PixdeskError):
    code = "clipboard_empty"
