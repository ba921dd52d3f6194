"""Screenshots through the xdg-desktop-portal (GNOME and KDE on Wayland, where mss sees nothing).

The protocol (org.freedesktop.portal.Screenshot, org.freedesktop.portal.Request):
1. Choose a `handle_token`; the request object will live at
   /org/freedesktop/portal/desktop/request/SENDER/TOKEN, SENDER being our unique bus name without the ':' and
   with '.' replaced by '_' (":1.42" -> "1_42").
2. Subscribe to Request.Response from the portal's bus owner *before* calling, so the answer cannot be missed.
3. Call Screenshot(parent_window="", {handle_token, interactive, modal}) -> the request's object path. Portals
   before 0.9 return a path of their own choosing: follow the returned one as well.
4. Wait for Response(u code, a{sv} results) on that path: 0 = success with results["uri"] (a file:// URI of a
   PNG), 1 = the user cancelled, 2 = ended otherwise. On timeout, Request.Close it.

D-Bus library: jeepney (pure Python, no C extension, small, used by keyring/SecretStorage, blocking API with
message filters). dbus-next is asyncio-only and unmaintained since 2021; python-dbus needs libdbus and a GLib
main loop; `gdbus call` cannot listen for the Response signal in the same process without racing it.
"""

from __future__ import annotations

import os
import secrets
import time
from collections import deque
from urllib.parse import unquote, urlparse

from .errors import CaptureCancelled, CaptureFailed, CaptureUnavailable
from .files import read_regular_file
from .pixels import DEFAULT_MAX_BYTES, ImageBytes, accepted_image

PORTAL_NAME = "org.freedesktop.portal.Desktop"
PORTAL_PATH = "/org/freedesktop/portal/desktop"
SCREENSHOT_IFACE = "org.freedesktop.portal.Screenshot"
REQUEST_IFACE = "org.freedesktop.portal.Request"
INSTALL = (
    "install xdg-desktop-portal with xdg-desktop-portal-gnome (GNOME) or xdg-desktop-portal-kde (KDE), "
    "and log in again"
)
_MISSING = {
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.UnknownMethod",
    "org.freedesktop.DBus.Error.UnknownInterface",
    "org.freedesktop.DBus.Error.UnknownObject",
}


def request_path(unique_name: str, token: str) -> str:
    """The object path the portal gives the request made by `unique_name` with `token` (step 1)."""
    return f"{PORTAL_PATH}/request/{unique_name.lstrip(':').replace('.', '_')}/{token}"


def session_bus_address() -> str:
    addr = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    if addr:
        return addr
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.exists(os.path.join(runtime, "bus")):
        return f"unix:path={runtime}/bus"
    raise CaptureUnavailable(
        "no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is unset); the screenshot portal needs one"
    )


def portal_screenshot(
    *, interactive: bool = False, timeout: float | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> ImageBytes:
    """Take a screenshot through the portal; `interactive` lets the user pick screen, window or area first.

    Raises CaptureUnavailable (no portal, no jeepney, no bus), CaptureCancelled (response 1), CaptureFailed.
    """
    try:
        from jeepney.io.blocking import open_dbus_connection
    except ImportError:
        raise CaptureUnavailable(
            "the screenshot portal needs the Python package jeepney: pip install jeepney"
        ) from None
    if timeout is None:
        timeout = 300.0 if interactive else 60.0  # GNOME may first ask whether pixdesk may take screenshots
    try:
        conn = open_dbus_connection(bus=session_bus_address())
    except (OSError, RuntimeError, ValueError) as e:
        raise CaptureUnavailable(f"cannot connect to the D-Bus session bus: {e}") from None
    with conn:
        uri = _request_uri(conn, interactive=interactive, timeout=timeout)
    return _read_uri(uri, max_bytes)


def _request_uri(conn, *, interactive: bool, timeout: float) -> str:
    from jeepney import DBusAddress, MatchRule, message_bus, new_method_call

    deadline = time.monotonic() + timeout
    owner = _portal_owner(conn)
    token = "pixdesk_" + secrets.token_hex(8)
    expected = request_path(conn.unique_name, token)
    rule = MatchRule(type="signal", sender=owner, interface=REQUEST_IFACE, member="Response")
    responses: deque = deque()
    with conn.filter(rule, queue=responses):
        _call(conn, message_bus.AddMatch(rule), "subscribing to the portal's answer")
        portal = DBusAddress(PORTAL_PATH, bus_name=PORTAL_NAME, interface=SCREENSHOT_IFACE)
        options = {"handle_token": ("s", token), "interactive": ("b", interactive), "modal": ("b", True)}
        (handle,) = _call(conn, new_method_call(portal, "Screenshot", "sa{sv}", ("", options)), "Screenshot")
        code, results = _await_response(conn, responses, owner, {expected, handle}, deadline, handle)
    return _uri_from(code, results)


def _portal_owner(conn) -> str:
    """The portal's unique bus name (activating the portal if it is not running yet)."""
    from jeepney import message_bus

    (running,) = _call(conn, message_bus.NameHasOwner(PORTAL_NAME), "finding the portal")
    if not running:  # started on demand by D-Bus activation, as the desktop's own clients do
        _call(conn, message_bus.StartServiceByName(PORTAL_NAME), "starting the portal")
    (owner,) = _call(conn, message_bus.GetNameOwner(PORTAL_NAME), "finding the portal")
    return owner


def _call(conn, msg, what: str, timeout: float = 30.0) -> tuple:
    from jeepney import DBusErrorResponse
    from jeepney.wrappers import unwrap_msg

    try:
        return unwrap_msg(conn.send_and_get_reply(msg, timeout=timeout))
    except DBusErrorResponse as e:
        if e.name in _MISSING:
            raise CaptureUnavailable(
                f"no screenshot portal on the session bus ({e.name}): {INSTALL}"
            ) from None
        raise CaptureFailed(
            f"the screenshot portal refused {what}: {e.name}: {' '.join(map(str, e.data))}"
        ) from None
    except TimeoutError:
        raise CaptureFailed(f"the session bus did not answer {what} within {timeout:g} s") from None


def _await_response(conn, responses: deque, owner: str, paths: set[str], deadline: float, handle: str):
    """(code, results) of the Response signal the portal sends on one of `paths`; others are dropped."""
    from jeepney import HeaderFields

    while True:
        left = deadline - time.monotonic()
        try:
            msg = conn.recv_until_filtered(responses, timeout=max(left, 0.0)) if left > 0 else None
        except TimeoutError:
            msg = None
        if msg is None:
            _close_request(conn, handle)
            raise CaptureFailed("the screenshot portal did not answer in time (the request was closed)")
        fields = msg.header.fields
        if fields.get(HeaderFields.sender) != owner or fields.get(HeaderFields.path) not in paths:
            continue  # another request's answer, or a signal not from the portal
        code, results = msg.body
        return code, results


def _close_request(conn, handle: str) -> None:
    from jeepney import DBusAddress, new_method_call

    try:
        request = DBusAddress(handle, bus_name=PORTAL_NAME, interface=REQUEST_IFACE)
        conn.send_and_get_reply(new_method_call(request, "Close"), timeout=2.0)
    except (OSError, TimeoutError):
        pass


def _uri_from(code: int, results: dict) -> str:
    if code == 1:
        raise CaptureCancelled("the screenshot was cancelled in the portal dialog")
    if code != 0:
        raise CaptureFailed(
            f"the screenshot portal ended the request without a screenshot (response {code}); on GNOME allow "
            "screenshots for this app under Settings > Apps, and check that the portal backend is running"
        )
    sig, uri = results.get("uri", ("s", ""))
    if sig != "s" or not uri:
        raise CaptureFailed("the screenshot portal answered without a file URI")
    return uri


def _read_uri(uri: str, max_bytes: int) -> ImageBytes:
    parts = urlparse(uri)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise CaptureFailed(f"the screenshot portal answered with a non-file URI: {uri}")
    path = os.path.realpath(unquote(parts.path))
    data = read_regular_file(path, max_bytes=max_bytes, shown=path)
    return accepted_image(data, "the portal's screenshot")
