"""What every command shares: output (answers to stdout, the rest to stderr), flags, settings, the model.

The cli package is the only place in pixdesk that prints.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from pixdesk.config import DTYPES, QUANTS, Settings, cache_dir, load_settings

DEMO_NOTICE = (
    "pixdesk: no model configured; using the built-in tiny demo checkpoint (random weights: its answers are "
    "random text). Point pixdesk at a real Pixtral checkpoint with --model DIR or model.path in config.toml."
)


def err(msg: str, end: str = "\n") -> None:
    """Progress, notes and errors: stderr."""
    print(msg, file=sys.stderr, end=end, flush=True)


def out(text: str) -> None:
    """Answers: stdout, flushed as they stream."""
    sys.stdout.write(text)
    sys.stdout.flush()


def warn_all(warnings: list[str]) -> None:
    for w in warnings:
        err(f"pixdesk: warning: {w}")


# ------------------------------------------------------------------------------------------------ flags


def model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="DIR", help="checkpoint directory (native or Hugging Face layout)")
    p.add_argument("--dtype", choices=DTYPES, help="compute dtype (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--quant", choices=QUANTS, help="weight quantization (default: none)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--config", metavar="FILE", type=Path, help="config.toml to read instead of the default")


def engine_flags(p: argparse.ArgumentParser) -> None:
    """Where the model runs: the resident daemon (started detached when absent) or this process."""
    model_flags(p)
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run the engine inside this command instead of the resident daemon (loads the model each time)",
    )


def sampling_flags(p: argparse.ArgumentParser, max_tokens: int | None) -> None:
    p.add_argument("--max-tokens", type=int, default=max_tokens, help="longest answer in tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, help="sampling seed (with --temperature > 0)")


def settings_from(ns: argparse.Namespace) -> Settings:
    overrides = {
        "model.path": getattr(ns, "model", None),
        "model.dtype": getattr(ns, "dtype", None),
        "model.quant": getattr(ns, "quant", None),
        "model.device": getattr(ns, "device", None),
    }
    for flag, key in (("host", "server.host"), ("port", "server.port")):
        overrides[key] = getattr(ns, flag, None)
    if getattr(ns, "allow_remote", False):
        overrides["server.allow_remote"] = True
    return load_settings(getattr(ns, "config", None), overrides=overrides)


def serve_argv(ns: argparse.Namespace) -> list[str]:
    """`pixdesk serve` arguments that start a daemon with this command's model flags."""
    argv: list[str] = []
    for flag in ("model", "dtype", "quant", "device", "config"):
        value = getattr(ns, flag, None)
        if value:
            argv += [f"--{flag}", str(value)]
    return argv


# ------------------------------------------------------------------------------------------------ model


def demo_checkpoint_dir() -> Path:
    """The tiny demo checkpoint, written once into the user cache dir."""
    from pixdesk.weights.tiny import make_tiny_checkpoint

    path = cache_dir() / "demo-tiny-v1"
    if not (path / "params.json").is_file():
        make_tiny_checkpoint(path.with_suffix(".tmp"), layout="native", seed=0)
        path.with_suffix(".tmp").replace(path)
    return path


def load_engine_checkpoint(settings: Settings, on_progress=None):
    from pixdesk.engine.prewarm import import_compiler_in_background
    from pixdesk.weights.checkpoint import load_checkpoint, resolve_device, resolve_dtype

    model_dir = settings.model.path
    if not model_dir:
        err(DEMO_NOTICE)
        model_dir = str(demo_checkpoint_dir())
    device = resolve_device(settings.model.device)
    dtype = resolve_dtype(settings.model.dtype, device)
    start = time.perf_counter()

    def report(done: int, total: int) -> None:
        if on_progress is not None:
            on_progress(done / max(total, 1))
        err(f"\rloading weights {100 * done // max(total, 1):3d}%", end="")

    import_compiler_in_background(device)  # beside the weights: the engine compiles next
    quant = settings.model.quant
    if quant != "none":
        where = cache_dir() / "quantized"
        err(f"weights: {quant}; a first start quantizes them and keeps the result in {where}")
    ckpt = load_checkpoint(model_dir, dtype=dtype, device=device, progress=report, quant=quant,
                           quant_cache=cache_dir() / "quantized")  # fmt: skip
    ckpt.model.fuse_projections()  # one q|k|v and one gate|up product per layer
    how = ""
    if ckpt.quant:
        cached = " and cached" if ckpt.quant["cache"] else ""
        from_cache = ckpt.quant["source"] == "cache"
        how = "read from the quantized cache" if from_cache else f"quantized at load{cached}"
        how = f", {quant} {how}"
    err(
        f"\rloaded {model_dir} ({ckpt.files.layout} layout{how}) on {device} in "
        f"{time.perf_counter() - start:.1f}s"
    )
    return ckpt


def copy_to_clipboard(text: str) -> None:
    """inputs.copy_text, with our stdout/stderr hidden from the tool it starts: xclip and xsel fork a process
    that serves the selection after we exit, and one holding our stdout would keep `pixdesk ... | cat` (or
    any caller reading our output to EOF) waiting until the selection changes hands."""
    from pixdesk.inputs import copy_text

    if os.name != "posix":
        copy_text(text)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        copy_text(text)
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)
