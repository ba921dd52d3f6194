"""A stand-in for xdg-desktop-portal's Screenshot interface, on the test's private session bus.

Run as a script: portal_standin.py MODE PNG_PATH LOG_PATH. It owns org.freedesktop.portal.Desktop, prints
"ready", and answers Screenshot(parent_window, options) the way the real portal does: the request object path
is /org/freedesktop/portal/desktop/request/SENDER/TOKEN, and the answer is a Request.Response signal on it.
MODE:
  ok      response 0 with uri = file://PNG_PATH
  cancel  response 1 (the user closed the dialog)
  fail    response 2
  legacy  ignores handle_token (portals before 0.9): replies with a path of its own and answers there
  decoys  first a Response on another request's path, and a forged Response on the right path sent from a
          second connection (not the portal), both pointing at DECOY files; then the real answer
  silent  never answers; records Request.Close
Every call it receives is appended to LOG_PATH as one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from jeepney import DBusAddress, HeaderFields, MessageType, new_method_return, new_signal
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import open_dbus_connection

PATH = "/org/freedesktop/portal/desktop"
REQUEST = "org.freedesktop.portal.Request"


def log(record: dict) -> None:
    with open(LOG, "a") as f:
        f.write(json.dumps(record) + "\n")


def respond(conn, path: str, code: int, uri: str | None) -> None:
    results = {"uri": ("s", uri)} if uri else {}
    conn.send(new_signal(DBusAddress(path, interface=REQUEST), "Response", "ua{sv}", (code, results)))


def on_screenshot(conn, msg, mode: str, png: Path) -> None:
    sender = msg.header.fields[HeaderFields.sender]
    parent_window, options = msg.body
    token = options.get("handle_token", ("s", ""))[1]
    path = f"{PATH}/request/{sender.lstrip(':').replace('.', '_')}/{token}"
    if mode == "legacy":
        path = f"{PATH}/request/legacy/42"
    log({"call": "Screenshot", "sender": sender, "parent_window": parent_window, "path": path,
         "options": {k: v[1] for k, v in options.items()}})  # fmt: skip
    conn.send(new_method_return(msg, "o", (path,)))
    uri = png.resolve().as_uri()
    if mode == "decoys":
        decoy = png.with_name("decoy.png").resolve().as_uri()
        respond(conn, f"{PATH}/request/{sender.lstrip(':').replace('.', '_')}/other_token", 0, decoy)
        with open_dbus_connection(bus=sys.argv[4]) as forger:  # same path, wrong sender
            respond(forger, path, 0, decoy)
            forger.send_and_get_reply(message_bus.GetId(), timeout=5)  # the bus has routed the forgery
    if mode in ("ok", "legacy", "decoys"):
        respond(conn, path, 0, uri)
    elif mode == "cancel":
        respond(conn, path, 1, None)
    elif mode == "fail":
        respond(conn, path, 2, None)


def main() -> None:
    mode, png = sys.argv[1], Path(sys.argv[2])
    with open_dbus_connection(bus=sys.argv[4]) as conn:
        conn.send_and_get_reply(message_bus.RequestName("org.freedesktop.portal.Desktop"), timeout=5)
        print("ready", flush=True)
        while True:
            msg = conn.receive()
            if msg.header.message_type != MessageType.method_call:
                continue
            member = msg.header.fields.get(HeaderFields.member)
            iface = msg.header.fields.get(HeaderFields.interface)
            if iface == "org.freedesktop.portal.Screenshot" and member == "Screenshot":
                on_screenshot(conn, msg, mode, png)
            elif iface == REQUEST and member == "Close":
                log({"call": "Close", "path": msg.header.fields[HeaderFields.path]})
                conn.send(new_method_return(msg))


if __name__ == "__main__":
    LOG = sys.argv[3]
    main()
