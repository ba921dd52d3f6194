"""Where to capture: the active window and an interactively selected region, as the platform tells them.

X11: `_NET_ACTIVE_WINDOW` on the root window (EWMH, set by every current window manager) read with xprop,
then the window's absolute position and size from xwininfo; selection with slop.
wlroots Wayland: sway (swaymsg) or Hyprland (hyprctl) for the focused window and the outputs; slurp selects.
Windows: GetForegroundWindow + DwmGetWindowAttribute. macOS: System Events through osascript (needs the
Accessibility permission). Each reader returns a Rect in the coordinates its capture backend uses.
"""

from __future__ import annotations

import json
import re
import sys

from pixdesk.errors import InvalidRequest

from .errors import CaptureCancelled, CaptureFailed, CaptureUnavailable
from .pixels import Rect
from .proc import find_tool, have_tool, run_tool, text_of

SELECT_TIMEOUT_S = 300.0  # a person is choosing a rectangle


def parse_region(text: str) -> Rect:
    """'X,Y,W,H' (also 'X Y W H' or slurp's 'X,Y WxH') -> Rect; width and height must be positive."""
    nums = re.findall(r"-?\d+", text)
    if len(nums) != 4:
        raise InvalidRequest(f"region must be X,Y,W,H (four integers), got {text!r}", param="region")
    x, y, w, h = (int(n) for n in nums)
    if w <= 0 or h <= 0:
        raise InvalidRequest(f"region width and height must be positive, got {w}x{h}", param="region")
    return Rect(x, y, w, h)


# X11 ----------------------------------------------------------------------------------------------------


def x11_active_window() -> Rect:
    xprop = find_tool("xprop", "capturing the active window on X11")
    xwininfo = find_tool("xwininfo", "capturing the active window on X11")
    win = parse_xprop_active(
        text_of([xprop, "-root", "_NET_ACTIVE_WINDOW"], what="reading the active window")
    )
    return parse_xwininfo(text_of([xwininfo, "-id", hex(win)], what="reading the active window's geometry"))


def parse_xprop_active(text: str) -> int:
    """Window id from `xprop -root _NET_ACTIVE_WINDOW`.

    '_NET_ACTIVE_WINDOW(WINDOW): window id # 0x3a00007' (typed WINDOW, as window managers set it) or
    '_NET_ACTIVE_WINDOW(CARDINAL) = 60817415' (set by hand); 'not found.' when no EWMH manager runs.
    """
    m = re.search(r"_NET_ACTIVE_WINDOW\([A-Z]+\)\s*(?::\s*window id #|=)\s*(0x[0-9a-fA-F]+|\d+)", text)
    if m is None:
        raise CaptureUnavailable(
            "the window manager does not publish the active window (_NET_ACTIVE_WINDOW); "
            "capture a region or use select instead"
        )
    win = int(m.group(1), 0)
    if win == 0:
        raise CaptureFailed("no window is active (focus one and try again)")
    return win


def parse_xwininfo(text: str) -> Rect:
    fields = dict(re.findall(r"^\s*(Absolute upper-left [XY]|Width|Height):\s*(-?\d+)", text, re.MULTILINE))
    try:
        x, y = int(fields["Absolute upper-left X"]), int(fields["Absolute upper-left Y"])
        return Rect(x, y, int(fields["Width"]), int(fields["Height"]))
    except KeyError:
        raise CaptureFailed("xwininfo did not report the window's geometry") from None


def x11_select() -> Rect:
    slop = find_tool("slop", "selecting a region on X11")
    out = run_tool([slop, "-f", "%x %y %w %h"], timeout=SELECT_TIMEOUT_S, max_bytes=4096, what="slop")
    if not out.ok:
        raise CaptureCancelled("the selection was cancelled")
    return parse_region(out.stdout.decode())


# wlroots Wayland (sway, Hyprland) ----------------------------------------------------------------------


def wlroots_active_window() -> Rect:
    if have_tool("swaymsg"):
        return focused_sway_rect(json.loads(text_of(["swaymsg", "-r", "-t", "get_tree"], what="swaymsg")))
    if have_tool("hyprctl"):
        win = json.loads(text_of(["hyprctl", "-j", "activewindow"], what="hyprctl"))
        if not win or "at" not in win:
            raise CaptureFailed("no window is active (focus one and try again)")
        return Rect(win["at"][0], win["at"][1], win["size"][0], win["size"][1])
    raise CaptureUnavailable(
        "capturing the active window on this Wayland compositor needs sway's swaymsg or Hyprland's hyprctl; "
        "use select (slurp) or a region instead"
    )


def focused_sway_rect(tree: dict) -> Rect:
    stack = [tree]
    while stack:
        node = stack.pop()
        if node.get("focused") and node.get("type") in ("con", "floating_con"):
            r = node["rect"]
            return Rect(r["x"], r["y"], r["width"], r["height"])
        stack.extend(node.get("nodes", []) + node.get("floating_nodes", []))
    raise CaptureFailed("no window is focused (focus one and try again)")


def wlroots_outputs() -> list[tuple[str, Rect]]:
    """(name, rect) of each active output, in the compositor's order (monitor 1 is the first)."""
    if have_tool("swaymsg"):
        outs = json.loads(text_of(["swaymsg", "-r", "-t", "get_outputs"], what="swaymsg"))
        return [(o["name"], Rect(**_xywh(o["rect"]))) for o in outs if o.get("active", True)]
    if have_tool("hyprctl"):
        mons = json.loads(text_of(["hyprctl", "-j", "monitors"], what="hyprctl"))
        return [(m["name"], Rect(m["x"], m["y"], m["width"], m["height"])) for m in mons]
    raise CaptureUnavailable(
        "choosing a monitor on this Wayland compositor needs sway's swaymsg or Hyprland's hyprctl; "
        "capture everything (full) or a region instead"
    )


def _xywh(r: dict) -> dict:
    return {"x": r["x"], "y": r["y"], "w": r["width"], "h": r["height"]}


def wayland_select() -> Rect:
    slurp = find_tool("slurp", "selecting a region on Wayland")
    out = run_tool([slurp], timeout=SELECT_TIMEOUT_S, max_bytes=4096, what="slurp")
    if not out.ok:
        raise CaptureCancelled("the selection was cancelled")
    return parse_region(out.stdout.decode())  # "X,Y WxH"


# Windows and macOS --------------------------------------------------------------------------------------


def windows_active_window() -> Rect:  # pragma: no cover - needs Windows
    import ctypes
    from ctypes import wintypes

    hwnd = ctypes.windll.user32.GetForegroundWindow()
    if not hwnd:
        raise CaptureFailed("no window is active (focus one and try again)")
    rect = wintypes.RECT()
    # The frame without the invisible resize borders; GetWindowRect includes them.
    if ctypes.windll.dwmapi.DwmGetWindowAttribute(hwnd, 9, ctypes.byref(rect), ctypes.sizeof(rect)) != 0:
        ctypes.windll.user32.GetWindowRect(hwnd, ctypes.byref(rect))
    return Rect(rect.left, rect.top, rect.right - rect.left, rect.bottom - rect.top)


_MAC_FRONT_WINDOW = """
tell application "System Events"
    set p to first application process whose frontmost is true
    set {x, y} to position of front window of p
    set {w, h} to size of front window of p
end tell
return (x as text) & " " & (y as text) & " " & (w as text) & " " & (h as text)
"""


def macos_active_window() -> Rect:  # pragma: no cover - needs macOS
    osascript = find_tool("osascript", "capturing the active window")
    out = run_tool([osascript, "-e", _MAC_FRONT_WINDOW], timeout=10.0, max_bytes=4096, what="osascript")
    if not out.ok:
        raise CaptureUnavailable(
            "macOS did not tell the front window's position; allow your terminal (or pixdesk) under System "
            f"Settings > Privacy & Security > Accessibility ({out.stderr})"
        )
    return parse_region(out.stdout.decode())


def active_window(platform: str = sys.platform) -> Rect:
    if platform == "win32":
        return windows_active_window()
    if platform == "darwin":
        return macos_active_window()
    return x11_active_window()
