"""plugins/hotkey install scripts against stand-ins for gsettings and kwriteconfig6 (state kept in a file)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HOTKEY = Path(__file__).resolve().parents[2] / "plugins" / "hotkey"
MEDIA_KEYS = "org.gnome.settings-daemon.plugins.media-keys"

FAKE_GSETTINGS = """
import json, os, sys
db = os.environ["FAKE_DB"]
state = json.load(open(db)) if os.path.exists(db) else {}
op, schema, key = sys.argv[1:4]
if op == "get":
    print(state.get(schema + " " + key, "@as []"))
else:
    if op == "set":
        state[schema + " " + key] = sys.argv[4]
    else:
        state.pop(schema + " " + key, None)
    json.dump(state, open(db, "w"))
"""

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is needed to run the scripts")


def _fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)


def _run(script: str, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", **env)
    return subprocess.run(["bash", str(HOTKEY / script), *args], env=full_env, capture_output=True, text=True)


def test_gnome_script_adds_once_quotes_the_path_and_removes(tmp_path):
    (tmp_path / "bin").mkdir()
    _fake(tmp_path / "bin", "gsettings", FAKE_GSETTINGS)
    db = tmp_path / "gsettings.json"
    db.write_text(json.dumps({f"{MEDIA_KEYS} custom-keybindings": "['/mine/']"}))
    for _ in range(2):  # idempotent
        done = _run("gnome/install.sh", tmp_path, FAKE_DB=str(db), PIXDESK="/opt/my tools/pixdesk")
        assert done.returncode == 0, done.stderr
    state = json.loads(db.read_text())
    paths = ast.literal_eval(state[f"{MEDIA_KEYS} custom-keybindings"])
    assert paths[0] == "/mine/" and len(paths) == 4 and len(set(paths)) == 4
    area = f"{MEDIA_KEYS}.custom-keybinding:{paths[1]}"
    assert state[f"{area} binding"] == "'<Super><Shift>a'"
    # GVariant '...' around a shell-quoted command: GNOME splits it with g_shell_parse_argv
    assert state[f"{area} command"] == "'/opt/my\\\\ tools/pixdesk snap --select --notify --copy'"
    done = _run("gnome/install.sh", tmp_path, "--remove", FAKE_DB=str(db))
    assert done.returncode == 0, done.stderr
    assert json.loads(db.read_text()) == {f"{MEDIA_KEYS} custom-keybindings": "['/mine/']"}


def test_kde_script_writes_launchers_and_shortcuts(tmp_path):
    (tmp_path / "bin").mkdir()
    log = tmp_path / "kwrite.log"
    _fake(
        tmp_path / "bin",
        "kwriteconfig6",
        f"import sys\nopen({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n",
    )
    data = tmp_path / "data"
    done = _run("kde/install.sh", tmp_path, XDG_DATA_HOME=str(data), PIXDESK="/opt/pixdesk")
    assert done.returncode == 0, done.stderr
    launcher = (data / "applications" / "net.local.pixdesk-area.desktop").read_text()
    assert 'Exec="/opt/pixdesk" snap --select --notify --copy' in launcher
    assert (
        "--group services --group net.local.pixdesk-window.desktop --key _launch Meta+Shift+W"
        in log.read_text()
    )
    done = _run("kde/install.sh", tmp_path, "--remove", XDG_DATA_HOME=str(data))
    assert done.returncode == 0, done.stderr
    assert not list((data / "applications").iterdir())
    assert "net.local.pixdesk-area.desktop --key _launch --delete" in log.read_text()


def test_every_binding_calls_pixdesk_snap():
    for path in [p for p in HOTKEY.rglob("*") if p.is_file() and p.name != "README.md"]:
        text = path.read_text()
        assert "snap" in text and "pixdesk" in text, path
