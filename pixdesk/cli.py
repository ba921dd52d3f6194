"""The command line. The only module that prints: answers go to stdout, progress and logs to stderr."""

from __future__ import annotations

import argparse
import logging
import sys
import time
import webbrowser
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

    serve = sub.add_parser("serve", help="run the daemon: OpenAI-compatible API and chat page on 127.0.0.1")
    _model_flags(serve)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8765; 0 picks a free one)")
    serve.add_argument(
        "--allow-remote", action="store_true", help="allow a non-loopback --host (exposes the API)"
    )
    serve.add_argument("--detach", action="store_true", help="start in the background and return")
    token = sub.add_parser("token", help="print the API key (created on first start)")
    token.add_argument("--rotate", action="store_true", help="replace the key (restart clients that kept it)")
    sub.add_parser("status", help="is a daemon running, where, and is its model loaded")
    stop = sub.add_parser("stop", help="stop the running daemon (in-flight requests may finish)")
    stop.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for it to exit")
    opener = sub.add_parser("open", help="open the chat page in the browser, logged in with a one-time code")
    opener.add_argument("--no-browser", action="store_true", help="only print the URL (to stderr)")
    return parser


def settings_from(ns: argparse.Namespace) -> Settings:
    overrides = {
        "model.path": ns.model,
        "model.dtype": ns.dtype,
        "model.quant": ns.quant,
        "model.device": ns.device,
    }
    for flag, key in (("host", "server.host"), ("port", "server.port")):
        overrides[key] = getattr(ns, flag, None)
    if getattr(ns, "allow_remote", False):
        overrides["server.allow_remote"] = True
    return load_settings(ns.config, overrides=overrides)


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


def load_engine_checkpoint(settings: Settings, on_progress=None):
    from pixdesk.weights.checkpoint import load_checkpoint, resolve_device, resolve_dtype

    model_dir = settings.model.path
    if not model_dir:
        _err(DEMO_NOTICE)
        model_dir = str(demo_checkpoint_dir())
    device = resolve_device(settings.model.device)
    dtype = resolve_dtype(settings.model.dtype, device)
    start = time.perf_counter()

    def report(done: int, total: int) -> None:
        if on_progress is not None:
            on_progress(done / max(total, 1))
        _progress(done, total)

    ckpt = load_checkpoint(model_dir, dtype=dtype, device=device, progress=report)
    _err(
        f"\rloaded {model_dir} ({ckpt.files.layout} layout) on {device} in {time.perf_counter() - start:.1f}s"
    )
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
        raise InvalidRequest(
            f"{len(images)} images; the limit is {settings.images.max_images} (images.max_images)"
        )
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


# ------------------------------------------------------------------------------------------------ daemon


def make_loader(settings: Settings):
    """The daemon's model loader: runs in a background thread once the server listens."""

    def load(progress):
        from pixdesk.engine.backend import LocalEngine
        from pixdesk.engine.scheduler import SchedulerConfig

        ckpt = load_engine_checkpoint(settings, progress)
        e, demo = settings.engine, not settings.model.path
        config = SchedulerConfig(max_batch=e.max_batch, max_context=settings.model.max_context,
                                 max_queue=e.max_queue, per_client_active=e.per_client_active)  # fmt: skip
        return LocalEngine(
            ckpt, config, images=settings.images, name="pixdesk-demo-tiny" if demo else None, demo=demo
        )

    load.demo = not settings.model.path  # known before loading: the page can say so at once
    return load


def _log_to_stderr() -> None:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )


def cmd_serve(ns: argparse.Namespace) -> int:
    from pixdesk.server.client import DaemonClient, start_detached
    from pixdesk.server.daemon import check_bind_host, run_daemon

    settings = settings_from(ns)
    check_bind_host(settings.server.host, settings.server.allow_remote)
    if ns.detach:
        running = DaemonClient.find()
        if running is not None:
            raise InvalidRequest(f"a pixdesk daemon is already running at {running.url} (pid {running.pid})")
        client = start_detached([a for a in ns.argv[1:] if a != "--detach"])
        _err(f"pixdesk daemon started: {client.url} (pid {client.pid}); `pixdesk stop` stops it")
        return 0
    _log_to_stderr()
    return run_daemon(settings, make_loader(settings), announce=_err)


def cmd_token(ns: argparse.Namespace) -> int:
    from pixdesk.server.daemon import key_file
    from pixdesk.server.discovery import read_api_key, rotate_api_key

    if ns.rotate:
        key = rotate_api_key(key_file())
        _err(f"new API key written to {key_file()}; a running daemon keeps the old key until it restarts")
    else:
        key = read_api_key(key_file(), create=True)
    print(key)
    return 0


def _running():
    from pixdesk.server.client import DaemonClient

    client = DaemonClient.find()
    if client is None:
        raise InvalidRequest("no pixdesk daemon is running; start one with `pixdesk serve --detach`")
    return client


def cmd_status(ns: argparse.Namespace) -> int:
    from pixdesk.server.client import DaemonClient

    client = DaemonClient.find()
    if client is None:
        print("not running")
        return 3
    _, health = client.call("GET", "/health", auth=False)
    version = client.info.get("version", "?")
    line = f"running {client.url} pid {client.pid} version {version}; model {health.get('status')}"
    if health.get("status") == "loading":
        line += f" ({100 * health.get('progress', 0):.0f}%)"
    elif health.get("status") == "ready":
        status, models = client.call("GET", "/v1/models")
        if status == 200 and models.get("data"):
            card = models["data"][0]
            line += f": {card['id']}" + (" (demo checkpoint, random answers)" if card.get("demo") else "")
    print(line)
    return 0


def cmd_stop(ns: argparse.Namespace) -> int:
    client = _running()
    if not client.stop(ns.timeout):
        raise InvalidRequest(f"the daemon (pid {client.pid}) did not stop within {ns.timeout:g} s")
    _err(f"stopped the daemon at {client.url}")
    return 0


def cmd_open(ns: argparse.Namespace) -> int:
    from pixdesk.server.client import DaemonClient, start_detached

    client = DaemonClient.find() or start_detached([])
    status, body = client.call("POST", "/auth/code", {})
    if status != 200:
        raise InvalidRequest(
            f"the daemon refused a login code: {body.get('error', {}).get('message', status)}"
        )
    url = body["url"]
    if ns.no_browser or not webbrowser.open(url):
        _err(f"open this URL within {body.get('expires_in', 120)} s (it works once): {url}")
    return 0


COMMANDS = {
    "ask": cmd_ask,
    "serve": cmd_serve,
    "token": cmd_token,
    "status": cmd_status,
    "stop": cmd_stop,
    "open": cmd_open,
}


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    ns.argv = list(sys.argv[1:] if argv is None else argv)
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
