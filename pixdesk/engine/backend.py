"""The Engine API every front (HTTP, stdio, MCP, CLI) calls, and LocalEngine, which runs this package's model.

Fronts turn their input into messages and bytes; the engine prepares images, builds the prompt, checks
every limit before queueing, and streams typed events back through a Submission.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from pixdesk.config import ImageSettings
from pixdesk.engine.budget import fit_images
from pixdesk.engine.generate import TokenStream, check_context
from pixdesk.engine.sampling import SamplingParams, make_generator
from pixdesk.engine.scheduler import Scheduler
from pixdesk.engine.scheduler_config import SchedulerConfig
from pixdesk.engine.sequence import PRIORITIES, LogitMask, Sequence, Submission
from pixdesk.engine.stats import EngineStats
from pixdesk.errors import InvalidRequest, TooManyImages
from pixdesk.tokenizer.chat import ChatMessage, EncodedPrompt, encode_instruct
from pixdesk.tokenizer.image import ImageLimits, PreparedImage, prepare_image
from pixdesk.weights.checkpoint import Checkpoint


@dataclass(frozen=True)
class ModelInfo:
    id: str
    layout: str
    demo: bool  # the built-in tiny random checkpoint
    context: int
    vocab_size: int
    dtype: str
    quant: str  # none | int8 | int4 (weights of the decoder's linears)
    device: str
    vision: bool
    patch_size: int | None
    max_image_size: int | None
    manifest_id: str


GIL_SWITCH_S = 0.0005

log = logging.getLogger("pixdesk.engine")


def pin_compile_caches() -> None:
    """Compiled kernels persist across restarts in the user cache dir (warm start: seconds), Triton's next to
    Inductor's, fixed before anything compiles. Inductor sets TRITON_CACHE_DIR itself when its first kernel
    loads; left to that, our own Triton kernels (GEMVs, decode attention) compiled and autotuned before that
    moment went to ~/.triton/cache and were looked up in Inductor's directory after it, and that moment comes
    later on a warm start than on a cold one: the first warm start compiled them again and the second found
    them (ready 23.7 s against 16.8-19.6 on an H200, session 7)."""
    inductor = os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(_user_cache() / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(inductor, "triton"))


def _user_cache() -> Path:
    try:
        from pixdesk.config import cache_dir

        return cache_dir()
    except ImportError:  # a bare GPU box running from source may lack platformdirs
        return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "pixdesk"


class Engine(Protocol):
    info: ModelInfo

    def prepare_image(self, data: bytes) -> PreparedImage: ...

    def encode_chat(self, messages: list, tools: list | None = None) -> EncodedPrompt: ...

    def submit(
        self,
        prompt: EncodedPrompt,
        params: SamplingParams,
        *,
        priority: str = "interactive",
        client_id: str = "local",
        mask: LogitMask | None = None,
        response_format: dict | None = None,
        tools: list | None = None,
        tool_choice: str | dict | None = None,
    ) -> Submission: ...

    def stats(self) -> dict: ...


class LocalEngine:
    def __init__(
        self,
        checkpoint: Checkpoint,
        config: SchedulerConfig = SchedulerConfig(),
        *,
        images: ImageSettings = ImageSettings(),
        name: str | None = None,
        demo: bool = False,
    ):
        self.checkpoint, self.config, self.images = checkpoint, config, images
        self.model, self.tokenizer = checkpoint.model, checkpoint.tokenizer
        self.scheduler = Scheduler(self.model, config)
        self.config = config = self.scheduler.config  # with max_context resolved ("auto")
        self.warmup_s: float | None = None  # set by warm_up() (start() runs it where the step compiles)
        self.warmup_parts: list[tuple[str, float]] = []  # (what, seconds) per warm-up request
        self._grammar = None  # llguidance, built on first structured request (a bare GPU box may lack it)
        v = self.model.args.vision
        self.info = ModelInfo(
            id=name or checkpoint.files.root.name,
            layout=checkpoint.files.layout,
            demo=demo,
            context=config.max_context,
            vocab_size=self.model.args.text.vocab_size,
            dtype=str(self.model.dtype).removeprefix("torch."),
            quant=(checkpoint.quant or {}).get("mode", "none"),
            device=str(self.model.device),
            vision=v is not None,
            patch_size=v.patch_size if v else None,
            max_image_size=v.image_size if v else None,
            manifest_id=checkpoint.manifest_id,
        )

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> LocalEngine:
        compiled = self.scheduler.decoder is not None and self.scheduler.decoder.compile
        if compiled:
            pin_compile_caches()
        # A token the engine thread hands over waits for the GIL until that thread blocks or is made to
        # switch: Python's default 5 ms interval showed as 0-4 ms between the first token's pick and its
        # arrival (bench/ttft_trace.py). Lowered, never raised.
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_S))
        self.scheduler.start()
        if compiled:
            try:
                self.warm_up()
            except Exception:  # an optimisation only: the first request then pays the compile instead
                log.exception("warm-up failed; the first request will compile the decode step")
        return self

    def warm_up(self) -> float:
        """Compile and capture the decode step, the prefill regions and the short-prefill rows graph, and tune
        the kernels they use, before the first request instead of during it (the daemon reports ready only
        after this). Returns the seconds taken."""
        t0 = time.perf_counter()
        eos = getattr(self.tokenizer, "EOS", 2)
        params = SamplingParams(max_tokens=3, logit_bias={eos: -100.0})  # decode must happen
        self.warmup_parts = []
        for label, prompt in self._warm_up_prompts():
            t = time.perf_counter()
            for _ in self.submit(prompt, params, client_id="pixdesk-warm-up"):
                pass
            self.warmup_parts.append((label, round(time.perf_counter() - t, 3)))
        t = time.perf_counter()
        if self._warm_attention_kernels():
            self.warmup_parts.append(("attention kernels", round(time.perf_counter() - t, 3)))
        self.scheduler.stats = EngineStats()  # warm-up is not traffic
        self.warmup_s = time.perf_counter() - t0
        log.info("warm-up (compile, CUDA graph capture, kernel tuning) took %.1f s: %s", self.warmup_s,
                 ", ".join(f"{label} {s:.1f} s" for label, s in self.warmup_parts))  # fmt: skip
        return self.warmup_s

    def _warm_attention_kernels(self) -> int:
        """Every key bucket's decode-attention kernel variants (decode step and rows graphs), so that no
        request waits for a Triton compile when its context first reaches a bucket. Runs while the scheduler
        is idle (warm-up prompts done, nothing else submitted before ready)."""
        s = self.scheduler
        rows = s.prefiller.rows
        with torch.inference_mode():
            n = s.decoder.warm_attention() if s.decoder is not None else 0
            return n + (rows.warm_attention() if rows is not None else 0)

    def _warm_up_prompts(self) -> list[tuple[str, EncodedPrompt]]:
        """A full prefill (regions), 5 tokens after a prefix hit and 1 token after a full hit (the rows graph;
        without it, the regions' 1-token specialization), and a small image (the vision encoder's regions)."""
        n = max(1, min(64, self.config.max_context - 12))  # prompt + 5 more + 3 generated must fit
        base = [1, *range(1000, 1000 + n)]
        prompts = [
            ("full prefill + decode", EncodedPrompt(base, [])),
            ("5 tokens after a prefix hit", EncodedPrompt([*base, *range(1100, 1105)], [])),
            ("1 token after a full hit", EncodedPrompt(base, [])),
        ]
        v = self.model.args.vision
        if v is not None and n > 12:
            rows, cols = 2, 3
            pixels = torch.zeros(3, rows * v.patch_size, cols * v.patch_size)
            image = PreparedImage(pixels, rows, cols, "pixdesk-warm-up", (cols, rows))
            prompts.append(("image", EncodedPrompt([1, *image.token_ids(), 1000], [image])))
        return prompts

    def stop(self) -> None:
        self.scheduler.stop()
        if self._grammar is not None:
            self._grammar.close()

    @property
    def grammar(self):
        """The GrammarFactory for this tokenizer (structured output and tool calls)."""
        if self._grammar is None:
            from pixdesk.engine.grammar import GrammarFactory

            self._grammar = GrammarFactory(self.tokenizer)
        return self._grammar

    def __enter__(self) -> LocalEngine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------------------ inputs

    def prepare_image(self, data: bytes) -> PreparedImage:
        if not self.info.vision:
            raise InvalidRequest("this model has no vision encoder; send text only", param="messages")
        limits = ImageLimits(max_bytes=self.images.max_bytes, max_pixels=self.images.max_pixels)
        return prepare_image(
            data,
            patch_size=self.info.patch_size,
            max_image_size=self.info.max_image_size,
            max_patches=self.images.max_patches or None,
            limits=limits,
        )

    def encode_chat(self, messages: list, tools: list | None = None) -> EncodedPrompt:
        """Messages (ChatMessage, or tools.py's tool-call/result messages) -> prompt ids and images."""
        if not tools and all(isinstance(m, ChatMessage) for m in messages):
            prompt = encode_instruct(self.tokenizer, messages, answer_ids=self.scheduler.answers.lookup)
        else:
            from pixdesk.tokenizer.tools import encode_with_tools

            prompt = encode_with_tools(self.tokenizer, messages, tools)
        self._check_images(prompt)
        return prompt

    def _check_images(self, prompt: EncodedPrompt) -> None:
        if len(prompt.images) > self.images.max_images:
            raise TooManyImages(
                f"{len(prompt.images)} images in one request; the limit is {self.images.max_images} "
                "(images.max_images)",
                param="messages",
            )

    # ------------------------------------------------------------------------------ generation

    def submit(
        self,
        prompt: EncodedPrompt,
        params: SamplingParams,
        *,
        priority: str = "interactive",
        client_id: str = "local",
        mask: LogitMask | None = None,
        response_format: dict | None = None,
        tools: list | None = None,
        tool_choice: str | dict | None = None,
    ) -> Submission:
        """Queue one generation. `response_format` (json_object / json_schema) and `tools` + `tool_choice`
        (OpenAI shapes) become a grammar mask unless the caller passes its own `mask`."""
        if priority not in PRIORITIES:
            raise InvalidRequest(f"priority must be one of {', '.join(PRIORITIES)}", param="priority")
        params.validate(self.info.vocab_size)
        self._check_images(prompt)
        prompt, note = self._fit_context(prompt, params.max_tokens)
        if mask is None:
            mask = self._grammar_mask(params, response_format, tools, tool_choice)
        submission = Submission("", self.scheduler.wake)
        seq = Sequence(
            prompt=prompt,
            params=params,
            priority=priority,
            client_id=client_id,
            submission=submission,
            stream=TokenStream(self.tokenizer, params),
            generator=make_generator(params),
            mask=mask,
        )
        submission.id = seq.id
        if note:
            submission.notes.append(note)
        self.scheduler.enqueue(seq)
        return submission

    def _fit_context(self, prompt: EncodedPrompt, max_tokens: int) -> tuple[EncodedPrompt, str | None]:
        """The prompt as submitted, or with smaller images when it would not fit (automatic token budget)."""
        fitted = fit_images(prompt, max_tokens, self.config.max_context, self.info.patch_size or 16)
        note = None
        if fitted is not None:
            note = (
                f"images scaled down to fit the context: {len(prompt.ids)} -> {len(fitted.ids)} prompt tokens"
            )
            log.info(note)
            prompt = fitted
        check_context(len(prompt.ids), max_tokens, self.config.max_context)
        return prompt, note

    def _grammar_mask(self, params, response_format, tools, tool_choice) -> LogitMask | None:
        if tools:
            from pixdesk.tokenizer.tools import tool_call_mask

            return tool_call_mask(self.grammar, tools, tool_choice, params.max_tokens)
        if response_format is not None:
            from pixdesk.engine.grammar import mask_for_response_format

            return mask_for_response_format(self.grammar, response_format, params)
        return None

    def stats(self) -> dict:
        s = self.scheduler
        with s.cond:
            queued = {p: len(q) for p, q in s.queues.items()}
            active = len(s.active)
        return {
            **s.stats.snapshot(),
            "queued": queued,
            "active": active,
            "free_slots": len(s.free_slots),
            "prefix_cache": {
                **s.prefix.stats.as_dict(),
                "blocks": len(s.prefix.entries),
                "pinned_blocks": s.prefix.pinned_blocks,
                "used_bytes": s.prefix.used_bytes,
                "capacity_blocks": s.prefix.capacity,
            },
            "image_cache_entries": len(s.features.items),
        }
