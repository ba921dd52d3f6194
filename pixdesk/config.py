"""Typed settings: defaults < config.toml < PIXDESK_* environment < command-line flags.

Files live in platformdirs locations for the app name "pixdesk". Unknown keys are errors that name the
key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pixdesk.errors import InvalidConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

APP = "pixdesk"
DTYPES = ("fp32", "bf16", "fp16")
QUANTS = ("none", "int8", "int4")


@dataclass(frozen=True)
class ModelSettings:
    path: str = ""  # empty: the built-in tiny demo checkpoint
    dtype: str = ""  # empty: bf16 on GPU, fp32 on CPU
    quant: str = "none"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_context: int = 8192  # tokens per sequence (prompt + answer); "auto" (stored as 0): fits GPU memory


@dataclass(frozen=True)
class ImageSettings:
    max_images: int = 12  # per request
    max_pixels: int = 64_000_000  # decoded header size cap per image
    max_bytes: int = 32 * 1024 * 1024  # encoded size cap per image
    max_patches: int = 0  # image-token budget per image; 0 = the model's own limit
    fetch_urls: bool = True  # http(s) image URLs in requests (public addresses only); false -> 403
    fetch_timeout_s: float = 10.0  # whole fetch of one URL, redirects included


@dataclass(frozen=True)
class EngineSettings:
    max_batch: int = 4  # sequences decoding together (KV slots)
    max_queue: int = 64  # waiting requests before 429
    per_client_active: int = 4  # admitted sequences per client


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8765  # 0: any free port
    allow_remote: bool = False  # required to listen on a non-loopback address (--allow-remote)
    allowed_hosts: tuple[str, ...] = ()  # extra Host names (no port), e.g. a reverse proxy's
    allowed_origins: tuple[str, ...] = ()  # extra browser origins: regexes matched in full
    max_body_bytes: int = 0  # 0: derived from the image limits (base64 of max_images * max_bytes + 1 MiB)
    max_header_bytes: int = 16384  # request line + headers
    max_header_lines: int = 100
    header_timeout_s: float = 10.0  # the whole request head must arrive within this
    body_timeout_s: float = 30.0  # longest pause while a body is arriving
    load_wait_s: float = 120.0  # how long a request waits for the model to finish loading
    default_max_tokens: int = 4096  # when a request gives no max_tokens (capped by what the context has left)
    shutdown_grace_s: float = 10.0  # in-flight requests get this long to finish on stop
    session_hours: float = 24.0  # lifetime of a browser session made from a `pixdesk open` login code


@dataclass(frozen=True)
class Settings:
    model: ModelSettings = field(default_factory=ModelSettings)
    images: ImageSettings = field(default_factory=ImageSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    server: ServerSettings = field(default_factory=ServerSettings)


def _platformdirs():
    """Imported on use: the engine reads settings types on a bare GPU box that has only torch & co."""
    import platformdirs

    return platformdirs


def config_dir() -> Path:
    return Path(_platformdirs().user_config_dir(APP))


def runtime_dir() -> Path:
    """Discovery file and lock (platformdirs warns when XDG_RUNTIME_DIR is unset; the fallback is fine)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Path(_platformdirs().user_runtime_dir(APP))


def log_dir() -> Path:
    return Path(_platformdirs().user_log_dir(APP))


def cache_dir() -> Path:
    return Path(_platformdirs().user_cache_dir(APP))


def config_file(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env["PIXDESK_CONFIG"]) if env.get("PIXDESK_CONFIG") else config_dir() / "config.toml"


def load_settings(
    path: Path | None = None, *, env: dict[str, str] | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Merge the layers. `overrides` uses dotted keys from CLI flags, e.g. {"model.path": "/m"}."""
    env = os.environ if env is None else env
    path = path or config_file(env)
    settings = Settings()
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise InvalidConfig(f"{path}: {exc}") from None
        settings = _merge(settings, data, str(path))
    settings = _merge(settings, _from_env(env), "environment")
    for key, value in (overrides or {}).items():
        if value is not None:
            section, _, name = key.partition(".")
            settings = _merge(settings, {section: {name: value}}, "command line")
    return _validate(settings)


def _from_env(env: dict[str, str]) -> dict:
    """PIXDESK_MODEL_PATH=/m -> {"model": {"path": "/m"}} for every known section and field."""
    out: dict[str, dict] = {}
    for sec in fields(Settings):
        for f in fields(getattr(Settings(), sec.name)):
            var = f"PIXDESK_{sec.name}_{f.name}".upper()
            if var in env:
                out.setdefault(sec.name, {})[f.name] = env[var]
    return out


def _merge(settings: Settings, data: dict, where: str) -> Settings:
    for section, values in data.items():
        if section not in {f.name for f in fields(Settings)}:
            raise InvalidConfig(f"{where}: unknown section [{section}]", param=section)
        if not isinstance(values, dict):
            raise InvalidConfig(f"{where}: [{section}] must be a table", param=section)
        current = getattr(settings, section)
        known = {f.name: f for f in fields(current)}
        changes = {}
        for key, value in values.items():
            if key not in known:
                raise InvalidConfig(f"{where}: unknown key {section}.{key}", param=f"{section}.{key}")
            if (section, key, value) == ("model", "max_context", "auto"):
                value = 0  # "auto": the engine sizes the KV cache to the free device memory
            changes[key] = _coerce(value, type(getattr(current, key)), f"{section}.{key}", where)
        settings = replace(settings, **{section: replace(current, **changes)})
    return settings


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _coerce(value: Any, kind: type, key: str, where: str) -> Any:
    """TOML values arrive typed; environment values arrive as strings and are parsed here."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
    elif kind is tuple:
        if isinstance(value, str) and where == "environment":  # PIXDESK_...=a,b
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
    elif not isinstance(value, bool):
        if isinstance(value, kind) or (kind is float and isinstance(value, int)):
            return kind(value)
        if isinstance(value, str) and kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    want = {tuple: "a list of strings", bool: "true or false"}.get(kind, kind.__name__)
    raise InvalidConfig(f"{where}: {key} must be {want}, got {value!r}", param=key)


def _validate(s: Settings) -> Settings:
    if s.model.dtype and s.model.dtype not in DTYPES:
        raise InvalidConfig(f"model.dtype must be one of {', '.join(DTYPES)}", param="model.dtype")
    if s.model.quant not in QUANTS:
        raise InvalidConfig(f"model.quant must be one of {', '.join(QUANTS)}", param="model.quant")
    if s.model.max_context != 0 and s.model.max_context < 16:
        raise InvalidConfig(
            'model.max_context must be "auto" or at least 16 tokens', param="model.max_context"
        )
    _at_least(s, "images.max_images", 1)
    _at_least(s, "images.max_bytes", 1)
    _at_least(s, "images.max_pixels", 1)
    _at_least(s, "images.fetch_timeout_s", 0.1)
    _at_least(s, "engine.max_batch", 1)
    _at_least(s, "engine.max_queue", 0)
    _at_least(s, "engine.per_client_active", 1)
    for key in ("header_timeout_s", "body_timeout_s", "shutdown_grace_s", "session_hours"):
        _at_least(s, f"server.{key}", 0.1)
    _at_least(s, "server.load_wait_s", 0)
    _at_least(s, "server.default_max_tokens", 1)
    _at_least(s, "server.max_body_bytes", 0)
    _at_least(s, "server.max_header_bytes", 1024)
    _at_least(s, "server.max_header_lines", 8)
    if not 0 <= s.server.port <= 65535:
        raise InvalidConfig(f"server.port must be 0..65535, got {s.server.port}", param="server.port")
    if not s.server.host:
        raise InvalidConfig("server.host must not be empty", param="server.host")
    for pattern in s.server.allowed_origins:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise InvalidConfig(
                f"server.allowed_origins: {pattern!r} is not a valid regex ({exc})",
                param="server.allowed_origins",
            ) from None
    return s


def _at_least(s: Settings, key: str, low: float) -> None:
    section, name = key.split(".")
    value = getattr(getattr(s, section), name)
    if value < low:
        raise InvalidConfig(f"{key} must be at least {low}, got {value}", param=key)


def max_body_bytes(s: Settings) -> int:
    """The request body cap: every image at its byte limit, base64-encoded, plus 1 MiB for the rest."""
    if s.server.max_body_bytes:
        return s.server.max_body_bytes
    return s.images.max_images * (-(-s.images.max_bytes // 3) * 4) + 2**20
