"""`pixdesk mcp`: a Model Context Protocol server over stdio, built on the official SDK's low-level Server.

The SDK serves both protocol eras on one stream: the 2025-11-25 `initialize` handshake (and older) and the
2026-07-28 revision (`server/discover`, a `_meta` envelope on every request); the first request decides.
This module adds the tools (mcp_tools.py), the roots policy for file arguments, the screen opt-in, and
its own stdio framing (rpc_framing.py: size cap, JSON-RPC errors for unreadable frames, stdout claimed).

Roots: legacy clients that declare `roots` are asked with `roots/list` on each call that names a file;
2026-07-28 clients get an `InputRequiredResult` asking for their roots and retry with them. `--root DIR`
adds folders of the user's choosing. No roots at all: file arguments are refused.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from urllib.parse import unquote, urlsplit

from pixdesk import __version__
from pixdesk.errors import InvalidRequest, NotFound, PixdeskError
from pixdesk.server.mcp_tools import BY_NAME, RESULT_SCHEMA, TOOLS, check_arguments, result_text, structured
from pixdesk.server.mcp_tools import task_options as _options
from pixdesk.server.rpc_daemon import Bridge, add_engine_arguments
from pixdesk.server.rpc_framing import (
    BadFrame,
    FrameReader,
    FrameWriter,
    RpcError,
    error_response,
    parse_message,
    read_stdin_chunks,
    serve_frames,
)
from pixdesk.server.rpc_images import ImageResolver

log = logging.getLogger("pixdesk.mcp")
INSTRUCTIONS = (
    "pixdesk answers questions about images with a local Pixtral model. Pass images as absolute file paths "
    "inside your roots, data: URIs or http(s) URLs. ask_about_screen works only when the user allowed it."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_engine_arguments(p)
    p.add_argument(
        "--allow-screen",
        action="store_true",
        help="let the agent capture the screen and clipboard (each capture is announced)",
    )
    p.add_argument(
        "--root",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder file arguments may come from, besides the client's roots (repeatable)",
    )


def _sdk():
    try:
        import mcp_types as types
        from mcp.server.lowlevel import Server
        from mcp.shared.exceptions import MCPError
        from mcp.shared.message import SessionMessage
    except ImportError:
        raise InvalidRequest("pixdesk mcp needs the MCP SDK: pip install 'pixdesk[mcp]' (mcp>=2)") from None
    return types, Server, MCPError, SessionMessage


class PixdeskMCP:
    def __init__(self, ns: argparse.Namespace, bridge: Bridge, limits):
        self.ns, self.bridge, self.limits = ns, bridge, limits
        self.allow_screen = bool(ns.allow_screen) or os.environ.get("PIXDESK_MCP_ALLOW_SCREEN", "") in (
            "1",
            "true",
        )
        self.types, Server, self.MCPError, _ = _sdk()
        self.server = Server("pixdesk", version=__version__, title="pixdesk (local Pixtral)",
                             instructions=INSTRUCTIONS, on_list_tools=self.list_tools,
                             on_call_tool=self.call_tool)  # fmt: skip

    async def list_tools(self, ctx, params):
        t = self.types
        tools = [
            t.Tool(
                name=s.name,
                title=s.title,
                description=s.description,
                input_schema=s.input_schema(),
                output_schema=RESULT_SCHEMA,
                annotations=t.ToolAnnotations(
                    read_only_hint=True, destructive_hint=False, open_world_hint=s.screen
                ),
            )  # fmt: skip
            for s in TOOLS
        ]
        return t.ListToolsResult(tools=tools)

    async def call_tool(self, ctx, params):
        t = self.types
        spec = BY_NAME.get(params.name)
        try:
            if spec is None:
                raise NotFound(f"no tool named {params.name[:60]!r}; the tools are {', '.join(BY_NAME)}")
            args = check_arguments(spec, params.arguments or {})
            roots = None
            if not spec.screen and _names_a_file(args["image"]):
                roots = await self.roots(ctx, params)
                if isinstance(roots, t.InputRequiredResult):
                    return roots
            result = await self.run_tool(ctx, spec, args, roots)
        except PixdeskError as exc:
            if exc.kind.mcp == "protocol":
                raise self.MCPError(code=exc.jsonrpc_code, message=exc.message,
                                    data={"code": exc.code, "param": exc.param}) from None  # fmt: skip
            return t.CallToolResult(content=[t.TextContent(type="text", text=exc.message)],
                                    structured_content=exc.to_dict(), is_error=True)  # fmt: skip
        return t.CallToolResult(content=[t.TextContent(type="text", text=result_text(result))],
                                structured_content=structured(result))  # fmt: skip

    async def run_tool(self, ctx, spec, args: dict, roots: list[str] | None) -> dict:
        async def allowed() -> list[str]:
            return roots or []

        resolver = ImageResolver(max_bytes=self.limits.max_bytes, max_pixels=self.limits.max_pixels,
                                 allow_capture=self.allow_screen, announce=True, roots=allowed,
                                 client=_client_name(ctx))  # fmt: skip
        if spec.screen:
            image = await resolver.capture(args.get("source", "screen"), args.get("region"),
                                           args.get("monitor"), "arguments")  # fmt: skip
        else:
            image = await resolver.resolve(args["image"], "image")
        body = {"images": [image], "options": _options(spec, args)}
        total = float(args.get("max_tokens") or 1024)
        state = {"n": 0, "final": None}

        async def on_chunk(chunk: dict) -> None:
            if chunk.get("object") == "task.result":
                state["final"] = chunk
            elif chunk.get("delta"):
                state["n"] += 1
                await ctx.session.report_progress(min(state["n"], total), total, "generating")

        async def on_restart() -> None:
            state["n"] = 0
            await ctx.session.report_progress(0, total, "the daemon restarted; resubmitted")

        await self.bridge.stream(f"/v1/tasks/{spec.task}", body, on_chunk, on_restart)
        return state["final"]

    async def roots(self, ctx, params):
        """The client's file roots (plus --root folders), or an InputRequiredResult asking for them."""
        t = self.types
        extra = [os.path.abspath(r) for r in self.ns.root]
        caps = ctx.session.client_capabilities
        if caps is None or caps.roots is None:
            return extra
        from mcp_types.version import MODERN_PROTOCOL_VERSIONS

        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS or not ctx.session.can_send_request:
            answered = (params.input_responses or {}).get("roots")
            if answered is None:
                return t.InputRequiredResult(input_requests={"roots": t.ListRootsRequest()})
            listed = answered
        else:
            listed = await ctx.session.send_request(t.ListRootsRequest(), t.ListRootsResult)
        return extra + [p for p in (_root_path(str(r.uri)) for r in listed.roots) if p]


def _names_a_file(image: str) -> bool:
    head = image[:8].lower()
    return not (head.startswith("data:") or head.startswith("http://") or head.startswith("https://"))


def _root_path(uri: str) -> str | None:
    parts = urlsplit(uri)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        return None
    return unquote(parts.path)


def _client_name(ctx) -> str:
    params = ctx.session.client_params
    info = getattr(params, "client_info", None)
    return f"the MCP client {info.name!r}" if info is not None else "an MCP client"


# --------------------------------------------------------------------------------------------- transport


async def serve(app: PixdeskMCP, writer: FrameWriter) -> int:
    """Frames from stdin -> the SDK's read stream; its write stream -> NDJSON frames on stdout."""
    import anyio

    types, _, _, SessionMessage = _sdk()
    read_send, read_recv = anyio.create_memory_object_stream(16)
    write_send, write_recv = anyio.create_memory_object_stream(16)
    chunks: asyncio.Queue[bytes] = asyncio.Queue()
    read_stdin_chunks(asyncio.get_running_loop(), chunks)

    async def pump_in() -> None:
        reader = FrameReader()
        async with read_send:
            while True:
                chunk = await chunks.get()
                for frame in reader.feed(chunk) if chunk else reader.eof():
                    message = _message(frame, writer, types)
                    if message is not None:
                        await read_send.send(SessionMessage(message))
                if not chunk:
                    return

    async def pump_out() -> None:
        async with write_recv:
            async for item in write_recv:
                writer.send_raw(item.message.model_dump_json(by_alias=True, exclude_unset=True).encode())

    app.bridge.start()
    async with anyio.create_task_group() as tg:
        tg.start_soon(pump_in)
        tg.start_soon(pump_out)
        await app.server.run(read_recv, write_send, app.server.create_initialization_options())
        tg.cancel_scope.cancel()
    app.bridge.stop()
    return 0


def _message(frame, writer: FrameWriter, types):
    """A frame -> an SDK JSON-RPC message, or None after answering a bad frame ourselves."""
    from pydantic import ValidationError

    if isinstance(frame, BadFrame):
        writer.send(error_response(None, RpcError(frame.code, frame.message)))
        return None
    try:
        msg = parse_message(frame, responses=True)
        return types.jsonrpc_message_adapter.validate_python(msg, by_name=False)
    except RpcError as exc:
        writer.send(error_response(None, exc))
    except ValidationError:
        rid = msg.get("id") if isinstance(msg.get("id"), (str, int)) else None
        writer.send(error_response(rid, RpcError(-32600, "invalid request: not a JSON-RPC 2.0 message")))
    return None


def run(ns: argparse.Namespace) -> int:
    from pixdesk.config import load_settings

    def start(writer: FrameWriter):
        return serve(PixdeskMCP(ns, Bridge(ns), load_settings(ns.config).images), writer)

    return serve_frames("pixdesk mcp", start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pixdesk mcp", description="MCP server over stdio (local Pixtral)")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
