"""The command line. The only module that prints: answers go to stdout, progress and logs to stderr."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pixdesk import __version__
from pixdesk.config import DTYPES, QUANTS, Settings, cache_dir, load_settings
from pixdesk.errors import InvalidRequest, PixdeskError

DEMO_NOTICE = (
    "pixdesk: no model configured; using the built-in tiny demo checkpoint (random weights: its answers are "
    "random text). Point pixdesk at a real Pixtral checkpoint with --model DIR or model.path in config.toml."
)


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="DIR", help="checkpoint directory (native or Hugging Face layout)")
    p.add_argument("--dtype", choices=DTYPES, help="compute dtype (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--quant", choices=QUANTS, help="weight quantization (default: none)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--config", metavar="FILE", type=Path, help="config.toml to read instead of the default")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixdesk", description="Local Pixtral vision-language assistant")
    parser.add_argument("--version", action="version", version=f"pixdesk {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    ask = sub.add_parser("ask", help="ask a question about images (streams the answer to stdout)")
    _model_flags(ask)
    ask.add_argument("--image", action="append", default=[], metavar="FILE", help="an image (repeatable)")
    ask.add_argument("--max-tokens", type=int, default=512)
    ask.add_argument("--temperature", type=float, default=0.0)
    ask.add_argument("--top-p", type=float, default=1.0)
    ask.add_argument("--seed", type=int)
    ask.add_argument("--system", help="system prompt")
    ask.add_argument("--in-process", action="store_true", help="run the engine inside this command")
    ask.add_argument("args", nargs="+", metavar="[FILE]... QUESTION", help="image files, then the question")
    return parser


def settings_from(ns: argparse.Namespace) -> Settings:
    return load_settings(
        ns.config,
        overrides={
            "model.path": ns.model,
            "model.dtype": ns.dtype,
            "model.quant": ns.quant,
            "model.device": ns.device,
        },
    )


def demo_checkpoint_dir() -> Path:
    """The tiny demo checkpoint, written once into the user cache dir."""
    from pixdesk.weights.tiny import make_tiny_checkpoint

    path = cache_dir() / "demo-tiny-v1"
    if not (path / "params.json").is_file():
        make_tiny_checkpoint(path.with_suffix(".tmp"), layout="native", seed=0)
        path.with_suffix(".tmp").replace(path)
    return path


def _progress(done: int, total: int) -> None:
    print(f"\rloading weights {100 * done // max(total, 1):3d}%", end="", file=sys.stderr, flush=True)


def load_engine_checkpoint(settings: Settings):
    from pixdesk.weights.checkpoint import load_checkpoint, resolve_device, resolve_dtype

    model_dir = settings.model.path
    if not model_dir:
        _err(DEMO_NOTICE)
        model_dir = str(demo_checkpoint_dir())
    device = resolve_device(settings.model.device)
    dtype = resolve_dtype(settings.model.dtype, device)
    start = time.perf_counter()
    ckpt = load_checkpoint(model_dir, dtype=dtype, device=device, progress=_progress)
    _err(f"\rloaded {model_dir} ({ckpt.files.layout} layout) on {device} in {time.perf_counter() - start:.1f}s")
    return ckpt


def cmd_ask(ns: argparse.Namespace) -> int:
    from pixdesk.engine.events import Delta, Finish
    from pixdesk.engine.generate import generate
    from pixdesk.engine.sampling import SamplingParams
    from pixdesk.tokenizer.chat import ChatMessage, ImageChunk, TextChunk, encode_instruct
    from pixdesk.tokenizer.image import ImageLimits, prepare_image

    *files, question = ns.args
    question = sys.stdin.read() if question == "-" else question
    settings = settings_from(ns)
    ckpt = load_engine_checkpoint(settings)
    images = [_read_image(Path(f), settings, ckpt, prepare_image, ImageLimits) for f in [*ns.image, *files]]
    if len(images) > settings.images.max_images:
        raise InvalidRequest(f"{len(images)} images; the limit is {settings.images.max_images} (images.max_images)")
    content = [*(ImageChunk(img) for img in images), TextChunk(question)]
    messages = ([ChatMessage("system", ns.system)] if ns.system else []) + [ChatMessage("user", content)]
    prompt = encode_instruct(ckpt.tokenizer, messages)
    params = SamplingParams(
        max_tokens=ns.max_tokens, temperature=ns.temperature, top_p=ns.top_p, seed=ns.seed
    ).validate(ckpt.model.args.text.vocab_size)
    for event in generate(ckpt.model, ckpt.tokenizer, prompt, params):
        if isinstance(event, Delta):
            sys.stdout.write(event.text)
            sys.stdout.flush()
        elif isinstance(event, Finish):
            sys.stdout.write("\n")
            u = event.usage
            _err(f"[{event.reason}: {u.prompt_tokens} prompt + {u.completion_tokens} generated tokens]")
    return 0


def _read_image(path: Path, settings: Settings, ckpt, prepare_image, ImageLimits):
    if not path.is_file():
        raise InvalidRequest(f"{path}: no such file (images are given as FILE arguments before the question)")
    if path.stat().st_size > settings.images.max_bytes:
        raise InvalidRequest(f"{path}: larger than images.max_bytes = {settings.images.max_bytes}")
    vision = ckpt.model.args.vision
    if vision is None:
        raise InvalidRequest("this checkpoint has no vision encoder; ask without images")
    limits = ImageLimits(max_bytes=settings.images.max_bytes, max_pixels=settings.images.max_pixels)
    return prepare_image(
        path.read_bytes(),
        patch_size=vision.patch_size,
        max_image_size=vision.image_size,
        max_patches=settings.images.max_patches or None,
        limits=limits,
    )


COMMANDS = {"ask": cmd_ask}


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        return COMMANDS[ns.command](ns)
    except PixdeskError as exc:
        _err(f"pixdesk: error: {exc.message}")
        return 2
    except KeyboardInterrupt:
        _err("pixdesk: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
