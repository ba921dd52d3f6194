"""How much of a decode run the GPU spends executing, from a torch.profiler trace: the union of the device
events' intervals over the span from the first to the last (kernels launched with PDL overlap the one
before them, so summing their durations overcounts), and the idle gaps between them."""

from __future__ import annotations


def interval_union(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by (start, end) intervals, overlaps counted once."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def busy_report(intervals: list[tuple[float, float]], gap_us: float = 20.0) -> dict:
    """Intervals in microseconds -> span, busy time, busy fraction and the gaps longer than `gap_us`."""
    if not intervals:
        return {"span_s": 0.0, "busy_s": 0.0, "busy_fraction": 0.0, "long_gaps": 0, "long_gaps_s": 0.0}
    ordered = sorted(intervals)
    span = max(b for _, b in ordered) - ordered[0][0]
    gaps, end = [], ordered[0][1]
    for a, b in ordered[1:]:
        if a - end > gap_us:
            gaps.append(a - end)
        end = max(end, b)
    busy = interval_union(ordered)
    return {"span_s": span / 1e6, "busy_s": busy / 1e6, "busy_fraction": busy / span if span else 0.0,
            "long_gaps": len(gaps), "long_gaps_s": sum(gaps) / 1e6}  # fmt: skip


def device_intervals(prof) -> list[tuple[float, float]]:
    """(start, end) in us of every CUDA kernel and copy in a finished torch.profiler.profile."""
    out = []
    for e in prof.events():
        if str(getattr(e, "device_type", "")).endswith("CUDA"):
            out.append((e.time_range.start, e.time_range.end))
    return out
