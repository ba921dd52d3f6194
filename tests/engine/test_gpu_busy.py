"""The busy-time arithmetic of bench/gpu_busy.py (the GPU stage's idle-share report)."""

from __future__ import annotations

import pytest

from bench.gpu_busy import busy_report, idle_gaps, interval_union


def test_overlapping_kernels_count_once():
    # a PDL kernel starting under its predecessor, one nested inside, then a gap of 30 us
    intervals = [(0.0, 10.0), (8.0, 15.0), (9.0, 12.0), (45.0, 50.0)]
    assert interval_union(intervals) == pytest.approx(20.0)
    report = busy_report(intervals, gap_us=20.0)
    assert report["span_s"] == pytest.approx(50e-6) and report["busy_s"] == pytest.approx(20e-6)
    assert report["busy_fraction"] == pytest.approx(0.4)
    assert report["long_gaps"] == 1 and report["long_gaps_s"] == pytest.approx(30e-6)


def test_no_events():
    assert busy_report([])["busy_fraction"] == 0.0


def test_idle_gaps_name_the_events_either_side():
    events = [(45.0, 50.0, "c"), (0.0, 10.0, "a"), (8.0, 15.0, "b"), (9.0, 12.0, "nested")]
    assert idle_gaps(events, 20.0) == [(15.0, 45.0, (8.0, 15.0, "b"), (45.0, 50.0, "c"))]
    assert idle_gaps([], 20.0) == []
