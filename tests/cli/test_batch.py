"""`pixdesk receipt DIR --jsonl OUT`: interrupted by SIGINT and by SIGKILL, then rerun, every file is in the
output exactly once and no finished file is asked again (requests counted at the daemon's /metrics); a
question asked during the job is answered before the job ends."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

from PIL import Image

from tests.cli.conftest import pixdesk, settle

ROUTE = "/v1/tasks/{name}"


def _folder(tmp_path, n: int):
    folder = tmp_path / "receipts"
    folder.mkdir()
    for i in range(n):
        rng = random.Random(i)
        colour = tuple(rng.randrange(256) for _ in range(3))
        Image.new("RGB", (40 + 3 * i, 30 + 2 * i), colour).save(folder / f"r{i:02d}.png")
    (folder / "notes.txt").write_text("not an image: ignored")
    return folder


def _names(out) -> list[str]:
    data = out.read_bytes() if out.exists() else b""
    complete = data[: data.rfind(b"\n") + 1]
    return [json.loads(line)["file"] for line in complete.splitlines()]


def _default_sigint() -> None:
    """A suite started in the background (`make test &`) inherits SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler in the child: give it the default disposition a terminal's Ctrl-C meets."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(env, args):
    return subprocess.Popen([sys.executable, "-m", "pixdesk", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)  # fmt: skip


def _wait_lines(out, n: int, proc, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while len(_names(out)) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"fewer than {n} lines in {out}"
        time.sleep(0.05)


def test_folder_job_resumes_after_sigint_and_sigkill(daemon, tmp_path):
    folder = _folder(tmp_path, 24)  # enough that the job cannot finish between two lines and the signal
    every = sorted(p.name for p in folder.glob("*.png"))
    out = tmp_path / "out.jsonl"
    args = ["receipt", str(folder), "--jsonl", str(out), "--max-tokens", "80"]

    proc = _start(daemon.env, args)
    _wait_lines(out, 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Run the same command again" in err and "Traceback" not in err
    first = _names(out)
    assert len(first) >= 2 and len(set(first)) == len(first)

    proc = _start(daemon.env, args)
    _wait_lines(out, len(first) + 2, proc)
    proc.kill()
    proc.communicate(timeout=30)
    kept = _names(out)
    assert set(first) < set(kept) and len(set(kept)) == len(kept)
    # A SIGKILL inside the write leaves at most a partial last line: make one (the next file, half written).
    half = sorted(set(every) - set(kept))[0]
    with open(out, "ab") as f:
        f.write(b'{"file": "' + half.encode() + b'", "task": "rec')

    before = settle(daemon)
    done = pixdesk(daemon.env, *args)
    assert done.returncode == 0, done.stderr
    assert "partial line" in done.stderr and f"{len(kept)} already in" in done.stderr
    assert settle(daemon) - before == len(every) - len(kept)  # nothing redone but the half-written file
    final = _names(out)
    assert sorted(final) == every and out.read_bytes().endswith(b"\n")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["task"] == "receipt" and isinstance(r["data"], dict) for r in records)

    again = pixdesk(daemon.env, *args)
    assert (
        again.returncode == 0
        and "0 to do" in again.stderr
        and settle(daemon) - before == len(every) - len(kept)
    )
    assert _names(out) == final


def test_question_during_the_job_is_answered_first(daemon, tmp_path):
    folder = _folder(tmp_path, 8)
    out = tmp_path / "out.jsonl"
    image = next(folder.glob("*.png"))
    proc = _start(daemon.env, ["receipt", str(folder), "--jsonl", str(out), "--max-tokens", "100"])
    try:
        _wait_lines(out, 1, proc)
        asked = pixdesk(daemon.env, "ask", "--max-tokens", "8", str(image), "Quick question?")
        assert asked.returncode == 0 and "8 generated" in asked.stderr, asked.stderr
        assert proc.poll() is None and len(_names(out)) < 8  # the job is still going
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
    assert sorted(_names(out)) == sorted(p.name for p in folder.glob("*.png"))


def test_folder_errors(daemon, tmp_path):
    folder = _folder(tmp_path, 1)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    out = tmp_path / "out.jsonl"
    no_out = pixdesk(daemon.env, "receipt", str(folder))
    assert no_out.returncode == 2 and "--jsonl" in no_out.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    none = pixdesk(daemon.env, "receipt", str(empty), "--jsonl", str(out))
    assert none.returncode == 2 and "holds no images" in none.stderr
    done = pixdesk(daemon.env, "receipt", str(folder), "--jsonl", str(out), "--max-tokens", "80")
    assert done.returncode == 0, done.stderr
    records = {r["file"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert records["broken.png"]["error"]["code"] == "invalid_image" and "data" in records["r00.png"]
    out.write_text("not json\n")
    bad = pixdesk(daemon.env, "receipt", str(folder), "--jsonl", str(out))
    assert bad.returncode == 2 and "line 1" in bad.stderr
