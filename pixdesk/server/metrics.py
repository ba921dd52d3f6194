"""Prometheus text for /metrics, and the outermost middleware that counts requests and logs one line each.

Logs carry method, route, status, duration and token counts, never content, query strings or headers
(SECURITY.md row 32).
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from collections import Counter, deque

from pixdesk.engine.events import Finish

log = logging.getLogger("pixdesk.server")
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/health",
    "/metrics",
    "/auth/code",
    "/auth/exchange",
    "/auth/session",
    "/",
)
TOKEN_WINDOW_S = 60.0


def route_label(path: str) -> str:
    if path in ROUTES:
        return path
    if path.startswith("/v1/tasks/"):
        return "/v1/tasks/{name}"
    if path.startswith("/static/"):
        return "/static"
    return "other"


class ServerMetrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str, int]] = Counter()  # (method, route, status)
        self.finished: Counter[str] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.ttft_counts = [0] * (len(TTFT_BUCKETS) + 1)
        self.ttft_sum = 0.0
        self._recent: deque[tuple[float, int]] = deque()  # (finish time, completion tokens)

    def record_request(self, method: str, route: str, status: int) -> None:
        with self._lock:
            self.requests[method, route, status] += 1

    def record_ttft(self, seconds: float) -> None:
        with self._lock:
            self.ttft_counts[bisect.bisect_left(TTFT_BUCKETS, seconds)] += 1
            self.ttft_sum += seconds

    def record_finish(self, finish: Finish) -> None:
        u = finish.usage
        now = time.monotonic()
        with self._lock:
            self.finished[finish.reason] += 1
            self.prompt_tokens += u.prompt_tokens
            self.completion_tokens += u.completion_tokens
            self.cached_tokens += u.cached_tokens
            self._recent.append((now, u.completion_tokens))
            while self._recent and self._recent[0][0] < now - TOKEN_WINDOW_S:
                self._recent.popleft()

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            recent = [n for t, n in self._recent if t >= now - TOKEN_WINDOW_S]
        return sum(recent) / TOKEN_WINDOW_S

    def render(self, state: str, progress: float, engine_stats: dict | None, memory: dict[str, int]) -> str:
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP {name} {help_}\n# TYPE {name} {kind}")
            out.extend(f"{name}{labels} {_num(v)}" for labels, v in samples)

        with self._lock:
            reqs = sorted(self.requests.items())
            ttft, ttft_sum, finished = list(self.ttft_counts), self.ttft_sum, dict(self.finished)
            tokens = (self.prompt_tokens, self.completion_tokens, self.cached_tokens)
        metric("pixdesk_model_ready", "gauge", "1 when the model is loaded", [("", state == "ready")])
        metric("pixdesk_model_load_progress", "gauge", "model loading progress 0..1", [("", progress)])
        metric(
            "pixdesk_http_requests_total",
            "counter",
            "HTTP requests by method, route and status",
            [(f'{{method="{m}",route="{r}",status="{s}"}}', n) for (m, r, s), n in reqs],
        )
        metric(
            "pixdesk_generations_total",
            "counter",
            "finished generations by reason",
            [(f'{{reason="{k}"}}', v) for k, v in sorted(finished.items())],
        )
        metric(
            "pixdesk_tokens_total",
            "counter",
            "tokens of finished HTTP generations",
            [
                ('{kind="prompt"}', tokens[0]),
                ('{kind="completion"}', tokens[1]),
                ('{kind="cached_prompt"}', tokens[2]),
            ],
        )
        cum, samples = 0, []
        for le, n in zip([*TTFT_BUCKETS, "+Inf"], ttft):
            cum += n
            samples.append((f'_bucket{{le="{le}"}}', cum))
        out.append("# HELP pixdesk_time_to_first_token_seconds request arrival to first streamed token")
        out.append("# TYPE pixdesk_time_to_first_token_seconds histogram")
        out.extend(f"pixdesk_time_to_first_token_seconds{lbl} {v}" for lbl, v in samples)
        out.append(f"pixdesk_time_to_first_token_seconds_sum {_num(ttft_sum)}")
        out.append(f"pixdesk_time_to_first_token_seconds_count {cum}")
        metric(
            "pixdesk_generation_tokens_per_second",
            "gauge",
            f"completion tokens per second over the last {TOKEN_WINDOW_S:g} s",
            [("", self.tokens_per_second())],
        )
        if engine_stats is not None:
            self._engine(metric, engine_stats)
        metric(
            "pixdesk_memory_bytes",
            "gauge",
            "device memory in use (cuda: allocated tensors; cpu: process RSS)",
            [(f'{{device="{d}"}}', v) for d, v in memory.items()],
        )
        return "\n".join(out) + "\n"

    @staticmethod
    def _engine(metric, s: dict) -> None:
        queued = s.get("queued", {})
        metric(
            "pixdesk_queue_depth",
            "gauge",
            "requests waiting, by priority",
            [(f'{{priority="{p}"}}', n) for p, n in sorted(queued.items())],
        )
        metric("pixdesk_active_sequences", "gauge", "sequences holding a KV slot", [("", s.get("active", 0))])
        metric("pixdesk_free_kv_slots", "gauge", "KV slots free", [("", s.get("free_slots", 0))])
        pc = s.get("prefix_cache", {})
        metric(
            "pixdesk_prefix_cache_hit_ratio",
            "gauge",
            "prompt tokens served from the prefix cache / looked up",
            [("", pc.get("hit_ratio", 0.0))],
        )
        metric(
            "pixdesk_engine_decode_steps_total",
            "counter",
            "batched decode steps",
            [("", s.get("decode_steps", 0))],
        )
        metric(
            "pixdesk_engine_generated_tokens_total",
            "counter",
            "tokens sampled by the engine",
            [("", s.get("generated_tokens", 0))],
        )
        metric(
            "pixdesk_engine_rejected_total",
            "counter",
            "requests refused with 429",
            [("", s.get("rejected", 0))],
        )


def _num(v) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def memory_in_use(engine) -> dict[str, int]:
    device = str(getattr(getattr(engine, "info", None), "device", "cpu"))
    out = {}
    if device.startswith("cuda"):
        import torch

        out[device] = int(torch.cuda.memory_allocated(torch.device(device)))
    out["cpu"] = _rss()
    return out


def _rss() -> int:
    """Resident set size now (Linux), else the peak (other POSIX), else 0."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except ImportError:  # Windows
        return 0


class RequestLog:
    """Outermost middleware: counts each request by route and status and logs one content-free line."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        scope["pixdesk.t0"] = t0
        status = 0

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = route_label(scope["path"])
            self.metrics.record_request(scope["method"], route, status or 500)
            log.info(
                "%s %s %s %.0fms", scope["method"], route, status or "-", 1000 * (time.perf_counter() - t0)
            )
