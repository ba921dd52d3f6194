"""Typed settings: defaults < config.toml < PIXDESK_* environment < command-line flags.

Files live in platformdirs locations for the app name "pixdesk". Unknown keys are errors that name the
key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import platformdirs

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
    max_context: int = 8192  # tokens per sequence (prompt + answer)


@dataclass(frozen=True)
class ImageSettings:
    max_images: int = 12  # per request
    max_pixels: int = 64_000_000  # decoded header size cap per image
    max_bytes: int = 32 * 1024 * 1024  # encoded size cap per image
    max_patches: int = 0  # image-token budget per image; 0 = the model's own limit


@dataclass(frozen=True)
class Settings:
    model: ModelSettings = field(default_factory=ModelSettings)
    images: ImageSettings = field(default_factory=ImageSettings)


def config_dir() -> Path:
    return Path(platformdirs.user_config_dir(APP))


def cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir(APP))


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
            changes[key] = _coerce(value, type(getattr(current, key)), f"{section}.{key}", where)
        settings = replace(settings, **{section: replace(current, **changes)})
    return settings


def _coerce(value: Any, kind: type, key: str, where: str) -> Any:
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if isinstance(value, str) and kind is int:
        try:
            return int(value)
        except ValueError:
            pass
    raise InvalidConfig(f"{where}: {key} must be {kind.__name__}, got {value!r}", param=key)


def _validate(s: Settings) -> Settings:
    if s.model.dtype and s.model.dtype not in DTYPES:
        raise InvalidConfig(f"model.dtype must be one of {', '.join(DTYPES)}", param="model.dtype")
    if s.model.quant not in QUANTS:
        raise InvalidConfig(f"model.quant must be one of {', '.join(QUANTS)}", param="model.quant")
    if s.model.quant != "none":
        raise InvalidConfig(
            f"model.quant = {s.model.quant!r}: weight quantization is not built yet; use 'none'", param="model.quant"
        )
    if s.model.max_context < 16:
        raise InvalidConfig("model.max_context must be at least 16 tokens", param="model.max_context")
    if s.images.max_images < 1:
        raise InvalidConfig("images.max_images must be at least 1", param="images.max_images")
    return s
