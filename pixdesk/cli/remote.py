"""The CLI's HTTP client for the resident daemon: find it (or start it detached), wait until its model is
ready, send requests with the API key, stream SSE, and wait out 429 / 503 answers as Retry-After says.

http.client straight to the loopback address from the discovery file: no proxy ever sees the key.
"""

from __future__ import annotations

import base64
import http.client
import json
import time
import urllib.parse
from collections.abc import Callable, Iterator

from pixdesk.cli.common import err
from pixdesk.config import log_dir
from pixdesk.errors import KINDS, InvalidConfig, ModelLoading, ModelUnavailable, PixdeskError
from pixdesk.inputs import ImageBytes

READ_TIMEOUT_S = 900.0  # one whole non-streamed task answer, or the gap between two streamed chunks
RETRY_STATUSES = (429, 503)


def data_uri(image: ImageBytes) -> str:
    return f"data:{image.mime};base64,{base64.b64encode(image.data).decode()}"


def error_from(status: int, body: object) -> PixdeskError:
    """The daemon's OpenAI-shaped error body as the same typed error (same code, same message)."""
    e = body.get("error") if isinstance(body, dict) else None
    if isinstance(e, dict) and e.get("code") in KINDS:
        return PixdeskError(str(e.get("message") or e["code"]), code=e["code"], param=e.get("param"))
    return PixdeskError(f"the daemon answered HTTP {status}", code="internal_error")


class DaemonSession:
    """One daemon, as found through the discovery file."""

    def __init__(self, url: str, key: str, *, retry_budget_s: float = 600.0):
        parts = urllib.parse.urlsplit(url)
        self.url, self.host, self.port = url, parts.hostname or "127.0.0.1", parts.port or 80
        self._key = key
        self.retry_budget_s = retry_budget_s

    @classmethod
    def connect(cls, serve_argv: list[str], *, wait_s: float, retry_budget_s: float = 600.0) -> DaemonSession:
        """The running daemon, or a new one started detached with `serve_argv`; returns once it is ready."""
        from pixdesk.server.client import DaemonClient, start_detached

        client = DaemonClient.find()
        if client is None:
            err("pixdesk: no daemon is running; starting one (`pixdesk stop` stops it)")
            client = start_detached(serve_argv, timeout=wait_s)
        session = cls(client.url, client.key(), retry_budget_s=retry_budget_s)
        session.wait_ready(wait_s)
        return session

    # ------------------------------------------------------------------------------ health

    def wait_ready(self, timeout_s: float, poll_s: float = 0.2) -> None:
        """Poll the public /health until the model is loaded; clear errors on failure or timeout."""
        deadline = time.monotonic() + timeout_s
        shown = False
        while True:
            status, body = self._health()
            state = body.get("status") if isinstance(body, dict) else None
            if status == 200 and state == "ready":
                if shown:
                    err("")
                return
            if state == "failed":
                raise ModelUnavailable(
                    f"the daemon at {self.url} could not load its model; see {log_dir() / 'daemon.log'} "
                    "(or the terminal running `pixdesk serve`), fix the cause, then `pixdesk stop` and retry"
                )
            doing = loading_phase(body)
            if time.monotonic() >= deadline:
                raise ModelLoading(
                    f"the daemon's model is still loading ({doing}) after {timeout_s:g} s; "
                    "retry shortly (`pixdesk status` shows progress) or raise server.load_wait_s"
                )
            err(f"\rpixdesk: the daemon is loading its model: {doing}", end="")
            shown = True
            time.sleep(poll_s)

    def _health(self) -> tuple[int, dict]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request("GET", "/health")
            resp = conn.getresponse()
            return resp.status, _json(resp.read())
        except (OSError, http.client.HTTPException) as exc:
            raise InvalidConfig(
                f"the daemon at {self.url} does not answer ({exc}); see `pixdesk status`"
            ) from None
        finally:
            conn.close()

    # ------------------------------------------------------------------------------ requests

    def open(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        on_wait: Callable[[float, str], None] | None = None,
    ) -> http.client.HTTPResponse:
        """Send one request; 429 and 503-with-Retry-After are retried within retry_budget_s. Returns the
        open 2xx response (the caller reads or streams it); other statuses raise their typed error."""
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self._key}", "Accept": "application/json, text/event-stream"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        waited = 0.0
        while True:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=READ_TIMEOUT_S)
            try:
                conn.request(method, path, body=payload, headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise InvalidConfig(
                    f"the daemon at {self.url} does not answer ({exc}); see `pixdesk status`"
                ) from None
            if resp.status < 300:
                return resp
            data = _json(resp.read())
            conn.close()
            retry_after = resp.getheader("Retry-After")
            if resp.status in RETRY_STATUSES and retry_after and waited < self.retry_budget_s:
                delay = min(max(_seconds(retry_after), 0.2), 60.0, self.retry_budget_s - waited + 0.2)
                (on_wait or _say_waiting)(delay, error_from(resp.status, data).message)
                time.sleep(delay)
                waited += delay
                continue
            raise error_from(resp.status, data)

    def post(self, path: str, body: dict, **kw) -> dict:
        resp = self.open("POST", path, body, **kw)
        try:
            return _json(resp.read())
        finally:
            resp.close()

    def stream(self, path: str, body: dict, **kw) -> Iterator[dict]:
        """The JSON events of an SSE answer up to `[DONE]`; an error chunk in the stream raises its error."""
        resp = self.open("POST", path, {**body, "stream": True}, **kw)
        try:
            for line in resp:
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                event = _json(data)
                if "error" in event:
                    raise error_from(200, event)
                yield event
        except (OSError, http.client.HTTPException) as exc:
            raise InvalidConfig(f"the daemon at {self.url} broke off the answer ({exc})") from None
        finally:
            resp.close()  # closing early cancels the generation at the daemon

    def model_card(self) -> dict:
        resp = self.open("GET", "/v1/models")
        try:
            data = _json(resp.read()).get("data") or [{}]
        finally:
            resp.close()
        return data[0]


def _json(raw: bytes) -> dict:
    try:
        value = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _seconds(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return 1.0


def _say_waiting(delay: float, why: str) -> None:
    err(f"pixdesk: the daemon is busy ({why}); retrying in {delay:.0f} s")


def loading_phase(health) -> str:
    """A loading /health body in words: "42%" while the weights load, then the warm-up."""
    if not isinstance(health, dict):
        return "0%"
    if health.get("phase") == "warm-up":
        return "weights in, compiling and warming up"
    return f"{100 * float(health.get('progress', 0.0)):.0f}%"
