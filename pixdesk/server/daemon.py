"""The server as the user's resident daemon: bind policy, key, lock, discovery file, uvicorn, shutdown.

Start-up order: refuse a non-loopback bind without opt-in -> read (or create) the API key, refusing a
leaky key file -> take the single-instance lock -> bind the socket (so the real port is known) -> serve;
the discovery file is written once the app has started and the model loads in the background. SIGTERM /
SIGINT stop accepting, give in-flight requests server.shutdown_grace_s to finish, cancel the rest, stop
the engine and remove the discovery file.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import uvicorn

from pixdesk import __version__
from pixdesk.config import Settings, config_dir, runtime_dir
from pixdesk.errors import InvalidConfig
from pixdesk.server.app import create_app
from pixdesk.server.discovery import (
    KEY_FILE,
    DaemonRunning,
    InstanceLock,
    private_dir,
    read_api_key,
    read_discovery,
    remove_discovery,
    write_discovery,
)
from pixdesk.server.loading import Loader
from pixdesk.server.transport import guarded_h11

log = logging.getLogger("pixdesk.server")


def key_file() -> Path:
    return config_dir() / KEY_FILE


def check_bind_host(host: str, allow_remote: bool) -> None:
    """Row 8: loopback only, unless the user opted in explicitly."""
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not allow_remote:
        raise InvalidConfig(
            f"refusing to listen on {host}: pixdesk sees the screen and files of this desktop, so it "
            "listens on 127.0.0.1 only. Pass --allow-remote (server.allow_remote = true) if you really want "
            "other machines to reach it, and list the names they use in server.allowed_hosts",
            param="server.host",
        )


def uvicorn_config(app, settings: Settings) -> uvicorn.Config:
    s = settings.server
    return uvicorn.Config(
        app,
        http=guarded_h11(s.max_header_bytes, s.max_header_lines, s.header_timeout_s),  # h11, pinned
        h11_max_incomplete_event_size=s.max_header_bytes,
        ws="none",
        lifespan="on",
        interface="asgi3",
        log_config=None,  # our logging setup (stderr); uvicorn's access log would print query strings
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=s.shutdown_grace_s,
    )


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InvalidConfig(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_for(host: str, port: int) -> str:
    name = "127.0.0.1" if host in ("0.0.0.0", "localhost") else f"[{host}]" if ":" in host else host
    return f"http://{name}:{port}"


def run_daemon(settings: Settings, loader: Loader, *, announce: Callable[[str], None]) -> int:
    s = settings.server
    check_bind_host(s.host, s.allow_remote)
    api_key = read_api_key(key_file(), create=True)
    rdir = private_dir(runtime_dir())
    lock = InstanceLock(rdir)
    if not lock.acquire():
        other = read_discovery(rdir) or {}
        raise DaemonRunning(
            f"a pixdesk daemon is already running at {other.get('url', '?')} (pid {other.get('pid', '?')}); "
            "stop it with `pixdesk stop`"
        )
    pid = os.getpid()
    try:
        sock = bind(s.host, s.port)
        url = url_for(s.host, sock.getsockname()[1])
        info = {"pid": pid, "url": url, "version": __version__, "api_key_file": str(key_file())}

        def ready() -> None:
            write_discovery(rdir, info)
            announce(f"pixdesk {__version__} listening on {url} (pid {pid})")

        app = create_app(
            loader, settings, api_key, on_ready=ready, on_shutdown=lambda: remove_discovery(rdir, pid)
        )
        server = uvicorn.Server(uvicorn_config(app, settings))
        if threading.current_thread() is threading.main_thread():
            # uvicorn re-raises the signal it caught after its graceful shutdown: make SIGTERM exit 0
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            server.run(sockets=[sock])
        finally:
            sock.close()
    finally:
        remove_discovery(rdir, pid)
        lock.release()
    return 0 if server.started else 1
