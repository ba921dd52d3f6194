"""`pixdesk ask` as a real subprocess, in-process and through the daemon: stdout carries only the answer,
stderr the progress; both paths give the same greedy answer; a missing daemon is started detached."""

from __future__ import annotations

from PIL import Image

from tests.cli.conftest import make_env, pixdesk


def _image(tmp_path, name="shot.png", colour=(200, 30, 30)):
    path = tmp_path / name
    Image.new("RGB", (70, 40), colour).save(path)
    return path


def _generate_text(tiny, png: bytes, question: str, max_tokens: int) -> str:
    from pixdesk.engine.generate import generate
    from pixdesk.engine.sampling import SamplingParams
    from pixdesk.tokenizer.chat import ChatMessage, ImageChunk, TextChunk, encode_instruct
    from pixdesk.tokenizer.image import prepare_image

    content = [ImageChunk(prepare_image(png)), TextChunk(question)]
    prompt = encode_instruct(tiny.tokenizer, [ChatMessage("user", content)])
    events = generate(tiny.model, tiny.tokenizer, prompt, SamplingParams(max_tokens=max_tokens))
    return "".join(getattr(e, "text", "") for e in events)


def test_in_process_streams_the_answer_to_stdout_only(tiny_dir, tmp_path, tiny):
    img = _image(tmp_path)
    env = make_env(tmp_path)
    args = ["--model", str(tiny_dir), "--max-tokens", "12", "--image", str(img), "What is this?"]
    out = pixdesk(env, "ask", "--in-process", *args)
    assert out.returncode == 0, out.stderr
    assert "loaded" in out.stderr and "12 generated" in out.stderr
    assert out.stdout == _generate_text(tiny, img.read_bytes(), "What is this?", 12) + "\n"


def test_daemon_is_started_when_absent_and_answers_like_in_process(tiny_dir, tmp_path):
    img = _image(tmp_path, colour=(10, 120, 220))
    env = make_env(tmp_path, PIXDESK_SERVER_PORT="0")
    args = ["ask", "--model", str(tiny_dir), "--max-tokens", "16", str(img), "Describe it."]
    try:
        remote = pixdesk(env, *args)
        assert remote.returncode == 0, remote.stderr
        assert "starting one" in remote.stderr and "16 generated" in remote.stderr
        again = pixdesk(env, *args)  # the daemon stays resident
        assert again.returncode == 0 and "starting" not in again.stderr and again.stdout == remote.stdout
        local = pixdesk(env, args[0], "--in-process", *args[1:])
        assert local.returncode == 0, local.stderr
        assert remote.stdout == local.stdout and len(remote.stdout) > 1
    finally:
        assert pixdesk(env, "stop").returncode == 0


def test_demo_checkpoint_is_announced(tmp_path):
    out = pixdesk(make_env(tmp_path), "ask", "--in-process", "--max-tokens", "3", "Hello")
    assert out.returncode == 0, out.stderr
    assert "demo checkpoint" in out.stderr and "random" in out.stderr
    assert (tmp_path / "cache" / "pixdesk" / "demo-tiny-v1" / "params.json").is_file()


def test_errors_are_clear_and_exit_2(tiny_dir, tmp_path, daemon):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    local = ["ask", "--in-process", "--model", str(tiny_dir)]
    cases = [
        (make_env(tmp_path), [*local[:2], "--model", str(tmp_path / "nope"), "hi"], "does not exist"),
        (make_env(tmp_path), [*local, str(tmp_path / "missing.png"), "hi"], "not a readable regular file"),
        (daemon.env, ["ask", str(bad), "hi"], "error"),  # the daemon's invalid_image, same message
        (daemon.env, ["ask", "--temperature", "-1", "hi"], "temperature"),
        (daemon.env, ["ask", "/proc/self/environ", "hi"], "not a readable regular file"),
        (daemon.env, ["ask", "--region", "1,2,3", "hi"], "X,Y,W,H"),
        (daemon.env, ["ask", str(tmp_path), "hi"], "not a readable regular file"),
    ]
    for env, args, needle in cases:
        out = pixdesk(env, *args)
        assert out.returncode == 2, (args, out.stderr)
        assert needle in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
        assert out.stdout == ""


def test_question_from_stdin_and_image_bytes_travel_as_data(tmp_path, daemon):
    img = _image(tmp_path)
    piped = pixdesk(daemon.env, "ask", "--max-tokens", "6", str(img), "-", input="What colour?")
    direct = pixdesk(daemon.env, "ask", "--max-tokens", "6", str(img), "What colour?")
    assert piped.returncode == 0 and piped.stdout == direct.stdout
    other = pixdesk(daemon.env, "ask", "--max-tokens", "6", str(_image(tmp_path, "b.png", (0, 0, 0))),
                    "What colour?")  # fmt: skip
    assert other.returncode == 0 and "6 generated" in other.stderr


def test_quant_flag_quantizes_once_then_reads_the_cache(tiny_dir, tmp_path):
    img = _image(tmp_path)
    env = make_env(tmp_path)
    args = ["--model", str(tiny_dir), "--quant", "int8", "--max-tokens", "6", "--image", str(img), "What?"]
    first = pixdesk(env, "ask", "--in-process", *args)
    assert first.returncode == 0, first.stderr
    assert "int8 quantized at load and cached" in first.stderr and first.stdout.strip()
    second = pixdesk(env, "ask", "--in-process", *args)
    assert second.returncode == 0, second.stderr
    assert "int8 read from the quantized cache" in second.stderr
    assert second.stdout == first.stdout
    entries = list((tmp_path / "cache" / "pixdesk" / "quantized").iterdir())
    assert len(entries) == 1 and (entries[0] / "model.safetensors").is_file()
