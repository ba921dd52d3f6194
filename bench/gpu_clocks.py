"""The GPU's SM clock over time, read through NVML (libnvidia-ml, loaded with ctypes: no extra package) by a
sampler thread, so a benchmark can tell a slow kernel from a slow clock: after a long prefill the power
controller holds the SM clock down for tens of milliseconds, and the decode step is SM-clock bound.

    with ClockSampler() as clocks:
        ...                                   # the work to watch
    clocks.mean_mhz(t0, t1)                   # the mean SM clock between two perf_counter times

Event reasons are NVML's clocks-event bits: 0x1 idle, 0x4 software power cap, 0x8 hardware slowdown,
0x20 software thermal, 0x40 hardware thermal, 0x80 hardware power brake.
"""

from __future__ import annotations

import ctypes
import threading
import time

NVML_CLOCK_SM = 1


class ClockSampler:
    """Samples GPU `index`'s SM clock every `period_s` while inside the `with` block. Without NVML (no
    driver, a CPU machine) it records nothing and `mean_mhz` returns None."""

    def __init__(self, index: int = 0, period_s: float = 0.0005):
        self.period_s, self.samples = period_s, []  # (perf_counter, MHz, reasons)
        self._stop = threading.Event()
        self._nvml = self._handle = None
        try:
            nvml = ctypes.CDLL("libnvidia-ml.so.1")
            handle = ctypes.c_void_p()
            if nvml.nvmlInit_v2() == 0 and nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) == 0:
                self._nvml, self._handle = nvml, handle
        except OSError:
            pass

    def _read(self) -> tuple[int, int] | None:
        mhz, reasons = ctypes.c_uint(), ctypes.c_ulonglong()
        if self._nvml.nvmlDeviceGetClockInfo(self._handle, NVML_CLOCK_SM, ctypes.byref(mhz)) != 0:
            return None
        self._nvml.nvmlDeviceGetCurrentClocksThrottleReasons(self._handle, ctypes.byref(reasons))
        return mhz.value, reasons.value

    def _run(self) -> None:
        while not self._stop.is_set():
            got = self._read()
            if got is not None:
                self.samples.append((time.perf_counter(), *got))
            time.sleep(self.period_s)

    def __enter__(self) -> ClockSampler:
        if self._nvml is not None:
            self._thread = threading.Thread(target=self._run, name="clock-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._nvml is not None:
            self._thread.join()

    def mean_mhz(self, t0: float, t1: float) -> float | None:
        """The mean SM clock of the samples in [t0, t1]."""
        got = [mhz for t, mhz, _ in self.samples if t0 <= t <= t1]
        return sum(got) / len(got) if got else None


def run_clocks(clocks: ClockSampler, run: dict, head: int = 16) -> dict | None:
    """The mean SM clock of a timed run (bench/gpu.timed_run): over its prefill, its first `head` tokens
    and the rest."""
    t = run["times"]
    if not clocks.samples or len(t) <= head:
        return None
    return {"prefill": clocks.mean_mhz(run["t0"], t[0]), f"first_{head}": clocks.mean_mhz(t[0], t[head]),
            "rest": clocks.mean_mhz(t[head], t[-1])}  # fmt: skip
