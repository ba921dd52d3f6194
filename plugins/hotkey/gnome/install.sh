#!/usr/bin/env bash
# pixdesk hotkeys for GNOME (X11 and Wayland): custom keybindings through gsettings.
#   ./install.sh            add or update the three bindings
#   ./install.sh --remove   take them out again
# PIXDESK=/path/to/pixdesk overrides the pixdesk found on PATH. GNOME starts the command without a shell and
# without your shell's PATH, so the absolute path is written into the binding.
set -euo pipefail

SCHEMA=org.gnome.settings-daemon.plugins.media-keys
BASE=/org/gnome/settings-daemon/plugins/media-keys/custom-keybindings
PIXDESK="${PIXDESK:-$(command -v pixdesk || true)}"

# id | name | pixdesk arguments | accelerator
BINDINGS=(
  "pixdesk-area|pixdesk: ask about an area|snap --select --notify --copy|<Super><Shift>a"
  "pixdesk-window|pixdesk: ask about the active window|snap --window --notify --copy|<Super><Shift>w"
  "pixdesk-clipboard|pixdesk: ask about the copied image|snap --clipboard --notify --copy|<Super><Shift>v"
)

command -v gsettings >/dev/null || { echo "gsettings not found: is this GNOME?" >&2; exit 1; }

gvariant_string() {  # 'text' with ' and \ escaped, as gsettings parses it
  local s=${1//\\/\\\\}
  printf "'%s'" "${s//\'/\\\'}"
}

edit_list() {  # edit_list add|remove PATH: the custom-keybindings array, kept free of duplicates
  python3 - "$1" "$2" "$(gsettings get "$SCHEMA" custom-keybindings)" <<'PY'
import ast, sys
op, path, current = sys.argv[1], sys.argv[2], sys.argv[3]
items = ast.literal_eval(current.removeprefix("@as ").strip())
items = [p for p in items if p != path] + ([path] if op == "add" else [])
print("[" + ", ".join(repr(p) for p in items) + "]")
PY
}

for entry in "${BINDINGS[@]}"; do
  IFS='|' read -r id name args accel <<<"$entry"
  path="$BASE/$id/"
  key="$SCHEMA.custom-keybinding:$path"
  if [[ "${1:-}" == "--remove" ]]; then
    for field in name command binding; do gsettings reset "$key" "$field"; done
    gsettings set "$SCHEMA" custom-keybindings "$(edit_list remove "$path")"
    echo "removed $accel"
    continue
  fi
  [[ -n "$PIXDESK" ]] || { echo "pixdesk is not on PATH; run with PIXDESK=/path/to/pixdesk" >&2; exit 1; }
  gsettings set "$key" name "$(gvariant_string "$name")"
  gsettings set "$key" command "$(gvariant_string "$(printf '%q' "$PIXDESK") $args")"  # GNOME splits it like sh
  gsettings set "$key" binding "$(gvariant_string "$accel")"
  gsettings set "$SCHEMA" custom-keybindings "$(edit_list add "$path")"
  echo "$accel -> $PIXDESK $args"
done
