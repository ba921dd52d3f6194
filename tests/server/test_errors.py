"""The error table: pixdesk/errors.py and docs/errors.md agree; codes are unique and outside MCP's range."""

from __future__ import annotations

import re
from pathlib import Path

from pixdesk.errors import _KINDS, KINDS, PixdeskError

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"
MCP = {"tool": "tool result", "protocol": "JSON-RPC error", "http": "HTTP only"}


def test_doc_table_matches_the_code():
    rows = re.findall(
        r"^\| `([a-z_]+)` \| (\d+) \| (-\d+) \| ([^|]+) \| `([a-z_]+)` \|", DOC.read_text(), re.M
    )
    assert [r[0] for r in rows] == [k.code for k in _KINDS]
    for (code, http, rpc, mcp, kind), k in zip(rows, _KINDS):
        assert (int(http), int(rpc), kind) == (k.http_status, k.jsonrpc_code, k.type), code
        assert MCP[k.mcp] in mcp, code


def test_codes_are_unique_and_in_range():
    assert len(KINDS) == len(_KINDS)
    rpc = [k.jsonrpc_code for k in _KINDS]
    assert len(set(rpc)) == len(rpc)
    for code in rpc:
        assert code in (-32602, -32603) or (-32099 <= code <= -32003), code


def test_every_code_has_a_class_with_an_openai_body():
    import pixdesk.errors as errors

    classes = {c.code for c in vars(errors).values() if isinstance(c, type) and issubclass(c, PixdeskError)}
    assert set(KINDS) <= classes
    body = errors.UrlNotAllowed("no", param="messages[0]").to_dict()
    assert body == {
        "error": {
            "message": "no",
            "type": "invalid_request_error",
            "param": "messages[0]",
            "code": "url_not_allowed",
        }
    }
