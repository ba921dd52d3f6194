"""The daemon's own commands: serve, token, status, stop, open."""

from __future__ import annotations

import argparse
import logging
import sys
import webbrowser

from pixdesk.cli.common import err, load_engine_checkpoint, model_flags, settings_from
from pixdesk.cli.remote import loading_phase
from pixdesk.config import Settings
from pixdesk.errors import InvalidRequest


def add_parsers(sub) -> None:
    serve = sub.add_parser("serve", help="run the daemon: OpenAI-compatible API and chat page on 127.0.0.1")
    model_flags(serve)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8765; 0 picks a free one)")
    serve.add_argument(
        "--allow-remote", action="store_true", help="allow a non-loopback --host (exposes the API)"
    )
    serve.add_argument("--detach", action="store_true", help="start in the background and return")
    serve.set_defaults(run=cmd_serve)
    token = sub.add_parser("token", help="print the API key (created on first start)")
    token.add_argument("--rotate", action="store_true", help="replace the key (restart clients that kept it)")
    token.set_defaults(run=cmd_token)
    sub.add_parser("status", help="is a daemon running, where, and is its model loaded").set_defaults(
        run=cmd_status
    )
    stop = sub.add_parser("stop", help="stop the running daemon (in-flight requests may finish)")
    stop.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for it to exit")
    stop.set_defaults(run=cmd_stop)
    opener = sub.add_parser("open", help="open the chat page in the browser, logged in with a one-time code")
    opener.add_argument("--no-browser", action="store_true", help="only print the URL (to stderr)")
    opener.set_defaults(run=cmd_open)


def make_loader(settings: Settings):
    """The daemon's model loader: runs in a background thread once the server listens."""

    def load(progress):
        from pixdesk.engine.backend import LocalEngine
        from pixdesk.engine.scheduler_config import SchedulerConfig

        ckpt = load_engine_checkpoint(settings, progress)
        e, demo = settings.engine, not settings.model.path
        config = SchedulerConfig(
            max_batch=e.max_batch,
            max_context=settings.model.max_context,
            max_queue=e.max_queue,
            per_client_active=e.per_client_active,
        )
        return LocalEngine(
            ckpt, config, images=settings.images, name="pixdesk-demo-tiny" if demo else None, demo=demo
        )

    load.demo = not settings.model.path  # known before loading: the page can say so at once
    return load


def cmd_serve(ns: argparse.Namespace) -> int:
    from pixdesk.server.client import DaemonClient, start_detached
    from pixdesk.server.daemon import check_bind_host, run_daemon

    settings = settings_from(ns)
    check_bind_host(settings.server.host, settings.server.allow_remote)
    if ns.detach:
        running = DaemonClient.find()
        if running is not None:
            raise InvalidRequest(f"a pixdesk daemon is already running at {running.url} (pid {running.pid})")
        client = start_detached([a for a in ns.argv[1:] if a != "--detach"])
        err(f"pixdesk daemon started: {client.url} (pid {client.pid}); `pixdesk stop` stops it")
        return 0
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    return run_daemon(settings, make_loader(settings), announce=err)


def cmd_token(ns: argparse.Namespace) -> int:
    from pixdesk.server.daemon import key_file
    from pixdesk.server.discovery import read_api_key, rotate_api_key

    if ns.rotate:
        key = rotate_api_key(key_file())
        err(f"new API key written to {key_file()}; a running daemon keeps the old key until it restarts")
    else:
        key = read_api_key(key_file(), create=True)
    print(key)
    return 0


def cmd_status(ns: argparse.Namespace) -> int:
    from pixdesk.server.client import DaemonClient

    client = DaemonClient.find()
    if client is None:
        print("not running")
        return 3
    _, health = client.call("GET", "/health", auth=False)
    version = client.info.get("version", "?")
    line = f"running {client.url} pid {client.pid} version {version}; model {health.get('status')}"
    if health.get("status") == "loading":
        line += f" ({loading_phase(health)})"
    elif health.get("status") == "ready":
        status, models = client.call("GET", "/v1/models")
        if status == 200 and models.get("data"):
            card = models["data"][0]
            line += f": {card['id']}" + (" (demo checkpoint, random answers)" if card.get("demo") else "")
    print(line)
    return 0


def cmd_stop(ns: argparse.Namespace) -> int:
    from pixdesk.server.client import DaemonClient

    client = DaemonClient.find()
    if client is None:
        raise InvalidRequest("no pixdesk daemon is running; start one with `pixdesk serve --detach`")
    if not client.stop(ns.timeout):
        raise InvalidRequest(f"the daemon (pid {client.pid}) did not stop within {ns.timeout:g} s")
    err(f"stopped the daemon at {client.url}")
    return 0


def cmd_open(ns: argparse.Namespace) -> int:
    from pixdesk.server.client import DaemonClient, start_detached

    client = DaemonClient.find() or start_detached([])
    status, body = client.call("POST", "/auth/code", {})
    if status != 200:
        raise InvalidRequest(
            f"the daemon refused a login code: {body.get('error', {}).get('message', status)}"
        )
    url = body["url"]
    if ns.no_browser or not webbrowser.open(url):
        err(f"open this URL within {body.get('expires_in', 120)} s (it works once): {url}")
    return 0
