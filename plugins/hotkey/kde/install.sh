#!/usr/bin/env bash
# pixdesk hotkeys for KDE Plasma 5.27+ and 6 (X11 and Wayland): one .desktop launcher per action in
# ~/.local/share/applications, and its global shortcut in kglobalshortcutsrc - the same two things
# System Settings > Keyboard > Shortcuts > "Add Command" writes.
#   ./install.sh            add or update the three shortcuts
#   ./install.sh --remove   take them out again
# PIXDESK=/path/to/pixdesk overrides the pixdesk found on PATH.
set -euo pipefail

APPS="${XDG_DATA_HOME:-$HOME/.local/share}/applications"
PIXDESK="${PIXDESK:-$(command -v pixdesk || true)}"
KWRITE="$(command -v kwriteconfig6 || command -v kwriteconfig5 || true)"
[[ -n "$KWRITE" ]] || { echo "kwriteconfig6/kwriteconfig5 not found: is this KDE Plasma?" >&2; exit 1; }

# id | name | pixdesk arguments | shortcut
BINDINGS=(
  "net.local.pixdesk-area|pixdesk: ask about an area|snap --select --notify --copy|Meta+Shift+A"
  "net.local.pixdesk-window|pixdesk: ask about the active window|snap --window --notify --copy|Meta+Shift+W"
  "net.local.pixdesk-clipboard|pixdesk: ask about the copied image|snap --clipboard --notify --copy|Meta+Shift+V"
)

mkdir -p "$APPS"
for entry in "${BINDINGS[@]}"; do
  IFS='|' read -r id name args keys <<<"$entry"
  desktop="$id.desktop"
  if [[ "${1:-}" == "--remove" ]]; then
    rm -f "$APPS/$desktop"
    "$KWRITE" --file kglobalshortcutsrc --group services --group "$desktop" --key _launch --delete
    echo "removed $keys"
    continue
  fi
  [[ -n "$PIXDESK" ]] || { echo "pixdesk is not on PATH; run with PIXDESK=/path/to/pixdesk" >&2; exit 1; }
  cat >"$APPS/$desktop" <<DESKTOP
[Desktop Entry]
Type=Application
Name=$name
Exec="$PIXDESK" $args
Icon=camera-photo
NoDisplay=true
X-KDE-Shortcuts=$keys
DESKTOP
  "$KWRITE" --file kglobalshortcutsrc --group services --group "$desktop" --key _launch "$keys"
  echo "$keys -> $PIXDESK $args"
done

# Plasma reads kglobalshortcutsrc at login; System Settings > Shortcuts shows (and applies) the entries at once.
[[ "${1:-}" == "--remove" ]] || echo "Log out and back in (or open System Settings > Keyboard > Shortcuts) to activate the shortcuts."
