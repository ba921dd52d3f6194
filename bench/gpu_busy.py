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


def idle_gaps(events: list[tuple], gap_us: float) -> list[tuple[float, float, tuple, tuple]]:
    """Events (tuples that start with (start, end); any order) -> (idle from, idle to, the event that ended
    the busy stretch before, the event after) for each idle stretch longer than `gap_us`."""
    ordered = sorted(events)
    out, last = [], ordered[0] if ordered else None
    for ev in ordered[1:]:
        if ev[0] - last[1] > gap_us:
            out.append((last[1], ev[0], last, ev))
        if ev[1] > last[1]:
            last = ev
    return out


def busy_report(intervals: list[tuple[float, float]], gap_us: float = 20.0) -> dict:
    """Intervals in microseconds -> span, busy time, busy fraction and the gaps longer than `gap_us`."""
    if not intervals:
        return {"span_s": 0.0, "busy_s": 0.0, "busy_fraction": 0.0, "long_gaps": 0, "long_gaps_s": 0.0}
    span = max(b for _, b in intervals) - min(a for a, _ in intervals)
    gaps = [b - a for a, b, _, _ in idle_gaps(intervals, gap_us)]
    busy = interval_union(intervals)
    return {"span_s": span / 1e6, "busy_s": busy / 1e6, "busy_fraction": busy / span if span else 0.0,
            "long_gaps": len(gaps), "long_gaps_s": sum(gaps) / 1e6}  # fmt: skip


def device_intervals(prof) -> list[tuple[float, float]]:
    """(start, end) in us of every CUDA kernel and copy in a finished torch.profiler.profile."""
    out = []
    for e in prof.events():
        if str(getattr(e, "device_type", "")).endswith("CUDA"):
            out.append((e.time_range.start, e.time_range.end))
    return out
