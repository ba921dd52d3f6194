"""The command line: the only part of pixdesk that prints (answers to stdout, progress and logs to stderr).

One module per command group, each with `add_parsers(sub)` that sets `run` on its parsers:
    daemon.py  serve, token, status, stop, open
    ask.py     ask                      tasks.py  html, chart, receipt (batch.py: a folder of receipts)
    snap.py    snap (the hotkey flow; desktop.py has its prompt, notification and answer window)
Commands reach the model through runner.py: the resident daemon (remote.py, started detached when absent)
or `--in-process`. `stdio` and `mcp` come from pixdesk.server.stdio / pixdesk.server.mcp when present.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from pixdesk import __version__
from pixdesk.cli import ask, daemon, snap, tasks
from pixdesk.cli.common import err
from pixdesk.errors import Cancelled, PixdeskError

GROUPS = (ask, tasks, snap, daemon)
FRONTS = {  # optional fronts built elsewhere: (module, help); registered only when the module exists
    "stdio": ("pixdesk.server.stdio", "JSON-RPC over stdin/stdout for editors, forwarding to the daemon"),
    "mcp": ("pixdesk.server.mcp", "Model Context Protocol server on stdin/stdout"),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixdesk", description="Local Pixtral vision-language assistant")
    parser.add_argument("--version", action="version", version=f"pixdesk {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parsers(sub)
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    for name, (module_name, help_) in FRONTS.items():
        _add_front(sub, name, module_name, help_, chosen=bool(words) and words[0] == name)
    return parser


def _add_front(sub, name: str, module_name: str, help_: str, *, chosen: bool) -> None:
    """Import the front only when it is the command (the others need not pay for it); skip it when absent."""
    if importlib.util.find_spec(module_name) is None:
        return
    if not chosen:
        sub.add_parser(name, help=help_, add_help=False)
        return
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:  # the module exists but one of its imports is missing: say so on use
            p = sub.add_parser(name, help=help_)
            p.set_defaults(run=lambda ns, e=exc: _missing(name, e))
        return
    p = sub.add_parser(name, help=help_)
    module.add_arguments(p)
    p.set_defaults(run=module.run)


def _missing(name: str, exc: ModuleNotFoundError) -> int:
    err(f"pixdesk: error: `pixdesk {name}` needs the Python package {exc.name!r}; install it and retry")
    return 2


def main(argv: list[str] | None = None) -> int:
    ns = build_parser(argv).parse_args(argv)
    ns.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return ns.run(ns)
    except Cancelled as exc:
        err(f"pixdesk: {exc.message}")
        return 1
    except PixdeskError as exc:
        err(f"pixdesk: error: {exc.message}")
        return 2
    except KeyboardInterrupt:
        err("pixdesk: interrupted")
        return 130
    except BrokenPipeError:  # `pixdesk ask ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
