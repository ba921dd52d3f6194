"""`pixdesk snap` under Xvfb against the real daemon: the region is captured, the answer streams to a
stand-in notifier (PIXDESK_NOTIFY_CMD) and lands on the clipboard (read back with xclip -o); the answer is
the daemon's answer for exactly the captured pixels. Errors are notified too; a dismissed prompt cancels."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.cli.conftest import pixdesk
from tests.inputs.desktop import require_tools, stop

PATTERN = Path(__file__).resolve().parents[1] / "inputs" / "pattern_window.py"
WIN = (100, 80, 320, 200)
NOTIFIER = "import json, sys\nopen(sys.argv[1], 'a').write(json.dumps(sys.argv[2:]) + '\\n')\n"


@pytest.fixture(scope="module")
def pattern(xvfb_display, tk_available):
    env = dict(os.environ, DISPLAY=xvfb_display)
    proc = subprocess.Popen([sys.executable, str(PATTERN), *map(str, WIN)], env=env, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    if not proc.stdout.readline().strip():
        stop(proc)
        pytest.fail("the Tk pattern window did not start")
    yield
    stop(proc)


@pytest.fixture
def desk(x11, pattern, daemon, tmp_path):
    """The daemon's environment on the Xvfb display, with a stand-in notifier that logs to a file."""
    require_tools("xclip")
    from pixdesk.inputs import capture

    deadline = time.monotonic() + 10
    while len(Image.open(io.BytesIO(capture("region", region=WIN).images[0].data)).getcolors(64) or []) < 16:
        assert time.monotonic() < deadline, "the pattern window is not on the screen"
        time.sleep(0.05)
    script = tmp_path / "notify.py"
    script.write_text(NOTIFIER)
    log = tmp_path / "notified.jsonl"
    env = {**daemon.env, "DISPLAY": x11, "PIXDESK_NOTIFY_CMD": f"{sys.executable} {script} {log}"}
    return env, log


def _notified(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_snap_region_answers_into_notification_and_clipboard(desk, tmp_path):
    env, log = desk
    region = ",".join(map(str, WIN))
    out = pixdesk(env, "snap", "--region", region, "--question", "What is shown?", "--max-tokens", "12")
    assert out.returncode == 0, out.stderr
    assert "captured 320x200 px (x11)" in out.stderr and "on the clipboard" in out.stderr
    answer = out.stdout.strip()
    assert answer
    clip = subprocess.run(
        ["xclip", "-selection", "clipboard", "-o"], env=env, capture_output=True, timeout=10
    )
    assert clip.stdout.decode() == answer
    notes = _notified(log)
    assert notes[0] == ["pixdesk", "Q: What is shown? …"] and notes[-1] == ["pixdesk", answer]
    # The same pixels, saved by the test and asked through `ask` with the ask task's prompt: same answer.
    from pixdesk.inputs import capture
    from pixdesk.tasks.ask import SYSTEM

    shot = tmp_path / "region.png"
    shot.write_bytes(capture("region", region=WIN).images[0].data)
    ask = pixdesk(env, "ask", "--system", SYSTEM, "--max-tokens", "12", str(shot), "What is shown?")
    assert ask.returncode == 0 and ask.stdout.strip() == answer


def test_snap_errors_are_notified_and_a_dismissed_prompt_cancels(desk, tmp_path):
    env, log = desk
    subprocess.run(["xclip", "-selection", "clipboard", "-i"], input=b"just text", env=env, timeout=10)
    out = pixdesk(env, "snap", "--clipboard", "--question", "What is it?")
    assert out.returncode == 2 and "holds no image (it holds text)" in out.stderr and out.stdout == ""
    assert _notified(log)[-1][0] == "pixdesk: error" and "holds text" in _notified(log)[-1][1]

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    zenity = bin_dir / "zenity"
    zenity.write_text("#!/bin/sh\nexit 1\n")  # the user pressed Cancel
    zenity.chmod(0o755)
    path_env = {**env, "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}"}
    cancelled = pixdesk(path_env, "snap", "--region", "0,0,50,50")
    assert (
        cancelled.returncode == 1
        and "no question asked" in cancelled.stderr
        and "Traceback" not in cancelled.stderr
    )
    zenity.write_text("#!/bin/sh\necho 'What colour is it?'\n")
    asked = pixdesk(path_env, "snap", "--region", "0,0,50,50", "--no-copy", "--max-tokens", "4")
    assert asked.returncode == 0, asked.stderr
    assert _notified(log)[-1] == ["pixdesk", asked.stdout.strip()] and "clipboard" not in asked.stderr
