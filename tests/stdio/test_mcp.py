"""`pixdesk mcp` against the official MCP SDK client (both connect modes), plus raw-pipe protocol checks."""

from __future__ import annotations

import json

import anyio
import pytest

from tests.stdio.conftest import Rpc, command, metric, png_bytes

mcp = pytest.importorskip("mcp")  # pip install 'mcp>=2' (the test extra)
types = pytest.importorskip("mcp_types")  # only mcp 2.x ships it
from mcp import Client  # noqa: E402
from mcp.client.stdio import StdioServerParameters  # noqa: E402

TOOLS = {"ask_about_image", "ask_about_screen", "image_to_html", "read_chart", "transcribe_receipt"}


def params(env: dict, tiny_dir, *extra: str) -> StdioServerParameters:
    argv = [*command("mcp"), "--model", str(tiny_dir), *extra]
    return StdioServerParameters(command=argv[0], args=argv[1:], env=env)


def roots_of(*folders):
    async def list_roots(ctx):
        return types.ListRootsResult(roots=[types.Root(uri=f.as_uri(), name=f.name) for f in folders])

    return list_roots


def run(coro_fn, *args):
    return anyio.run(coro_fn, *args)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_sdk_client_lists_and_calls_every_tool(shared_env, tiny_dir, tmp_path, mode):
    image = tmp_path / "shot.png"
    image.write_bytes(png_bytes(48, 32))
    outside = tmp_path.parent / f"outside-{mode}.png"
    outside.write_bytes(png_bytes())
    progress: list[float] = []

    async def on_progress(done, total, message):
        progress.append(done)

    async def main():
        async with Client(params(shared_env, tiny_dir), mode=mode, list_roots_callback=roots_of(tmp_path),
                          read_timeout_seconds=120) as client:  # fmt: skip
            assert client.protocol_version == ("2026-07-28" if mode == "auto" else "2025-11-25")
            listed = (await client.list_tools()).tools
            assert {t.name for t in listed} == TOOLS
            assert all(t.input_schema["type"] == "object" and t.output_schema for t in listed)
            calls = {
                "ask_about_image": {"image": str(image), "question": "What colour?", "max_tokens": 8},
                "image_to_html": {"image": image.as_uri(), "max_tokens": 40},
                "read_chart": {"image": str(image), "max_tokens": 150},
                "transcribe_receipt": {"image": str(image), "max_tokens": 150},
            }
            for name, args in calls.items():
                res = await client.call_tool(name, args, progress_callback=on_progress)
                assert not res.is_error, (name, res.content)
                assert res.structured_content["task"] in ("ask", "html", "chart", "receipt")
                assert res.content[0].type == "text"
                assert res.structured_content["usage"]["completion_tokens"] > 0
            refused = await client.call_tool("ask_about_screen", {"question": "What is on screen?"})
            assert refused.is_error and refused.structured_content["error"]["code"] == "capture_not_allowed"
            assert "--allow-screen" in refused.content[0].text
            outside_root = await client.call_tool("ask_about_image", {"image": str(outside), "question": "x"})
            assert outside_root.is_error
            assert outside_root.structured_content["error"]["code"] == "path_not_allowed"
            bad = await client.call_tool("ask_about_image", {"image": str(image), "question": 3})
            assert bad.is_error and bad.structured_content["error"]["param"] == "question"
            with pytest.raises(mcp.MCPError) as unknown:
                await client.call_tool("no_such_tool", {})
            assert unknown.value.error.code == -32058 and unknown.value.error.data["code"] == "not_found"

    run(main)
    assert len(progress) >= 3  # notifications/progress reached the client's callback


def test_ask_about_screen_with_opt_in_under_xvfb(shared_env, tiny_dir, tmp_path, xvfb_display):
    marker = tmp_path / "notified.txt"
    notifier = f'sh -c \'printf "%s|%s\\n" "$0" "$1" >> {marker}\''
    env = {**shared_env, "DISPLAY": xvfb_display, "PIXDESK_NOTIFY_CMD": notifier}

    async def main():
        async with Client(params(env, tiny_dir, "--allow-screen"), read_timeout_seconds=120) as client:
            res = await client.call_tool("ask_about_screen", {"question": "What is shown?", "max_tokens": 6})
            assert not res.is_error, res.content
            assert res.structured_content["usage"]["prompt_tokens"] > 10
            args = {"question": "?", "source": "region", "region": [0, 0, 40, 40], "max_tokens": 3}
            region = await client.call_tool("ask_about_screen", args)
            assert not region.is_error, region.content

    run(main)
    lines = marker.read_text().splitlines()
    assert len(lines) == 2 and all("pixdesk" in line for line in lines)  # one notification per capture
    assert "screen" in lines[0]


def _handshake(rpc: Rpc) -> None:
    init = rpc.call("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                   "clientInfo": {"name": "raw", "version": "0"}})  # fmt: skip
    assert init["result"]["serverInfo"]["name"] == "pixdesk"
    rpc.send({"jsonrpc": "2.0", "method": "notifications/initialized"})


def test_raw_pipe_errors_cancellation_and_eof(shared_env, tiny_dir, tmp_path):
    rpc = Rpc([*command("mcp"), "--model", str(tiny_dir), "--root", str(tmp_path)], shared_env)
    _handshake(rpc)
    rpc.send_raw(b"{oops\n")
    assert rpc.next_frame()["error"]["code"] == -32700
    rpc.send_raw(b"[]\n")
    assert rpc.next_frame()["error"]["code"] == -32600
    assert rpc.call("no/such")["error"]["code"] == -32601
    image = tmp_path / "a.png"
    image.write_bytes(png_bytes())
    args = {"image": str(image), "question": "Describe at length", "max_tokens": 4000}
    rid = rpc.request("tools/call", {"name": "ask_about_image", "arguments": args,
                                     "_meta": {"progressToken": "p1"}})  # fmt: skip
    while not any(n.get("method") == "notifications/progress" for n in rpc.notes):
        rpc.notes.append(rpc.next_frame())
    rpc.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": rid}})
    done = rpc.call("tools/call", {"name": "ask_about_image",
                                   "arguments": {**args, "max_tokens": 3}})  # fmt: skip
    assert done["result"]["isError"] is False and json.dumps(done["result"]["structuredContent"])
    assert not [m for m in rpc.pending if m.get("id") == rid]  # a cancelled request is never answered
    assert metric(shared_env, "pixdesk_active_sequences") == 0
    assert rpc.close() == 0
