"""Runtime and peak memory of inference, measured the NTIRE kit's way on a GPU and honestly on a CPU.

GPU: CUDA events around the call and a synchronize, and `torch.cuda.max_memory_allocated()`, as the kit does.
CPU: a monotonic clock (perf_counter) around the call, and the peak resident memory of the whole process while
inference runs (Linux: the kernel's high-water mark, reset through /proc/self/clear_refs; where that reset is
unavailable or ignored, a psutil sampling thread). CPU figures are not comparable with the challenge's GPU figures.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

T = TypeVar("T")
MB = 1024**2  # the kit's "MB"
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def timed_ms(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """(fn(), its wall time in milliseconds): CUDA events + synchronize on a GPU, perf_counter on a CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = fn()
        end.record()
        torch.cuda.synchronize()
        return result, start.elapsed_time(end)
    start_s = time.perf_counter()
    result = fn()
    return result, (time.perf_counter() - start_s) * 1000.0


def median_ms(fn: Callable[[], object], runs: int) -> float:
    """The median wall time of `runs` calls of fn on a CPU, in milliseconds, after one untimed call (warm-up)."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _status_bytes(field: str) -> int | None:
    """A memory field of /proc/self/status ("VmHWM", "VmRSS") in bytes; None where there is no such file."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_high_water_mark() -> bool:
    """Reset the kernel's VmHWM to the current resident size; False where that is not possible. Some sandboxes
    accept the write to clear_refs and ignore it, so the reset is checked, not assumed."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    hwm, rss = _status_bytes("VmHWM"), _status_bytes("VmRSS")
    return hwm is not None and rss is not None and hwm - rss < 8 * MB


class PeakMemory:
    """Peak memory over stretches of inference, in MB: enter it around each inference call, read `peak_mb` (the
    maximum over all of them). `label` says what was measured."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb = 0.0
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        if device.type == "cuda":
            self.label = "torch.cuda.max_memory_allocated, MB (GPU, as the NTIRE kit)"
        else:
            self.label = "peak resident memory of the whole process during inference, MB (CPU)"

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            return self
        if reset_high_water_mark():
            return self
        self._stop.clear()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        return self

    def _sample(self) -> None:
        import psutil

        process = psutil.Process()
        while True:
            self.peak_mb = max(self.peak_mb, process.memory_info().rss / MB)
            if self._stop.wait(0.005):
                return

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / MB
        elif self._sampler is None:
            self.peak_mb = max(self.peak_mb, (_status_bytes("VmHWM") or 0) / MB)
        else:
            self._stop.set()
            self._sampler.join()
            self._sampler = None
