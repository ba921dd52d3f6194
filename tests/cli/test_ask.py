"""`pixdesk ask` as a real subprocess: stdout carries only the answer, stderr the progress; typed errors."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from PIL import Image


def _run(args, tmp_path, **kw):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
           "PYTHONPATH": os.getcwd()}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "pixdesk", *args], capture_output=True, text=True, env=env,
                          timeout=300, **kw)  # fmt: skip


def test_ask_streams_answer_to_stdout_only(tiny_dir, tmp_path, tiny):
    img = tmp_path / "shot.png"
    Image.new("RGB", (70, 40), (200, 30, 30)).save(img)
    out = _run(["ask", "--model", str(tiny_dir), "--max-tokens", "12", "--image", str(img), "What is this?"],
               tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "loaded" in out.stderr and "12 generated" in out.stderr
    assert out.stdout.endswith("\n") and "loaded" not in out.stdout
    # The same answer in-process: stdout is exactly the generated text.
    from pixdesk.engine.generate import generate
    from pixdesk.engine.sampling import SamplingParams
    from pixdesk.tokenizer.chat import ChatMessage, ImageChunk, TextChunk, encode_instruct
    from pixdesk.tokenizer.image import prepare_image

    buf = io.BytesIO()
    Image.new("RGB", (70, 40), (200, 30, 30)).save(buf, format="PNG")
    prompt = encode_instruct(tiny.tokenizer, [ChatMessage("user", [ImageChunk(prepare_image(buf.getvalue())),
                                                                   TextChunk("What is this?")])])  # fmt: skip
    text = "".join(getattr(e, "text", "") for e in generate(tiny.model, tiny.tokenizer, prompt,
                                                            SamplingParams(max_tokens=12)))  # fmt: skip
    assert out.stdout == text + "\n"


def test_demo_checkpoint_is_announced(tmp_path):
    out = _run(["ask", "--max-tokens", "3", "Hello"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "demo checkpoint" in out.stderr and "random" in out.stderr
    assert (tmp_path / "cache" / "pixdesk" / "demo-tiny-v1" / "params.json").is_file()


def test_errors_are_clear_and_exit_2(tiny_dir, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    cases = [
        (["ask", "--model", str(tmp_path / "nope"), "hi"], "does not exist"),
        (["ask", "--model", str(tiny_dir), str(tmp_path / "missing.png"), "hi"], "no such file"),
        (["ask", "--model", str(tiny_dir), str(bad), "hi"], "error"),
        (["ask", "--model", str(tiny_dir), "--temperature", "-1", "hi"], "temperature"),
    ]
    for args, needle in cases:
        out = _run(args, tmp_path)
        assert out.returncode == 2, (args, out.stderr)
        assert needle in out.stderr and "Traceback" not in out.stderr
        assert out.stdout == ""
