"""Bounded JSON parsing and typed field readers: every refusal names the field path (SECURITY.md rows 11-12).

The body is already capped by the body guard; here the JSON itself is bounded: no NaN/Infinity, at most
MAX_DEPTH levels of nesting and MAX_VALUES containers/items, so a 10k-deep `[[[[` or a million-element array
is a 400, not a RecursionError or a memory spike.
"""

from __future__ import annotations

import json
import math

from pixdesk.errors import InvalidRequest

MAX_DEPTH = 64
MAX_VALUES = 1_000_000  # rough: "," + "[" + "{" in the raw bytes (string contents included, so it errs high)
MAX_SHORT_STRING = 256  # model names, ids, enum-like values
MAX_IGNORED_BYTES = 16384  # accepted-and-ignored fields (metadata, user, ...) still have a size


def parse_json_body(body: bytes) -> dict:
    if not body.strip():
        raise InvalidRequest("the request body is empty; send a JSON object")
    if body.count(b",") + body.count(b"[") + body.count(b"{") > MAX_VALUES:
        raise InvalidRequest(f"the request has more than {MAX_VALUES} JSON values")
    try:
        value = json.loads(body, parse_constant=_no_constants)
    except RecursionError:
        raise InvalidRequest(f"the JSON nests deeper than {MAX_DEPTH} levels") from None
    except UnicodeDecodeError:
        raise InvalidRequest("the request body is not UTF-8 JSON") from None
    except ValueError as exc:  # JSONDecodeError, NaN, ints over 4300 digits
        raise InvalidRequest(f"the request body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"the request body must be a JSON object, got {type_name(value)}")
    _check_depth(value)
    return value


def _no_constants(name: str):
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


def _check_depth(root) -> None:
    stack = [(root, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidRequest(f"the JSON nests deeper than {MAX_DEPTH} levels")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))


def type_name(value) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)


class Fields:
    """Reads one JSON object: known names only (unknown -> 400 naming the path), typed getters."""

    def __init__(self, obj, path: str, known: frozenset[str] | set[str]):
        if not isinstance(obj, dict):
            raise InvalidRequest(
                f"{path or 'the body'} must be an object, got {type_name(obj)}", param=path or None
            )
        unknown = sorted(k for k in obj if k not in known)
        if unknown:
            name = unknown[0]
            more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
            raise InvalidRequest(
                f"{self._at(path, name[:100])}: unknown field{more}; pixdesk accepts the documented OpenAI "
                "fields and its own listed extensions",
                param=self._at(path, name[:100]),
            )
        self.obj, self.path = obj, path

    @staticmethod
    def _at(path: str, name: str) -> str:
        return f"{path}.{name}" if path else name

    def where(self, name: str) -> str:
        return self._at(self.path, name)

    def has(self, name: str) -> bool:
        return self.obj.get(name) is not None

    def raw(self, name: str, default=None):
        value = self.obj.get(name)
        return default if value is None else value

    def _bad(self, name: str, want: str) -> InvalidRequest:
        got = type_name(self.obj.get(name))
        return InvalidRequest(f"{self.where(name)} must be {want}, got {got}", param=self.where(name))

    def bool(self, name: str, default: bool = False) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise self._bad(name, "true or false")
        return value

    def int(self, name: str, default: int | None = None) -> int | None:
        value = self.raw(name, default)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(name, "an integer")
        return value

    def float(self, name: str, default: float | None = None) -> float | None:
        value = self.raw(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self._bad(name, "a finite number")
        return float(value)

    def str(self, name: str, default: str | None = None, *, max_len: int = MAX_SHORT_STRING) -> str | None:
        value = self.raw(name, default)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._bad(name, "a string")
        if len(value) > max_len:
            raise InvalidRequest(
                f"{self.where(name)} is longer than {max_len} characters", param=self.where(name)
            )
        return value

    def choice(self, name: str, options: tuple[str, ...], default: str | None = None) -> str | None:
        value = self.str(name, default)
        if value is not None and value not in options:
            raise InvalidRequest(
                f"{self.where(name)} must be one of {', '.join(options)}; got {value[:40]!r}",
                param=self.where(name),
            )
        return value

    def list(self, name: str, *, max_items: int) -> list | None:
        value = self.raw(name)
        if value is None:
            return None
        if not isinstance(value, list):
            raise self._bad(name, "an array")
        if len(value) > max_items:
            raise InvalidRequest(
                f"{self.where(name)} has more than {max_items} items", param=self.where(name)
            )
        return value

    def ignored(self, *names: str) -> None:
        """Fields that cannot change the output: accepted, size-checked, otherwise unused."""
        for name in names:
            if name in self.obj and len(json.dumps(self.obj[name])) > MAX_IGNORED_BYTES:
                raise InvalidRequest(
                    f"{self.where(name)} is larger than {MAX_IGNORED_BYTES} bytes", param=self.where(name)
                )

    def unsupported(self, name: str, why: str, *, allowed=(None,)) -> None:
        if self.obj.get(name) not in allowed:
            raise InvalidRequest(f"{self.where(name)}: {why}", param=self.where(name))
