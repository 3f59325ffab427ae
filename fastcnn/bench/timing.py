"""How one kernel is timed: first call apart, warm-up, time-budgeted repeats, statistics.

The first call is timed on its own (it includes Numba's JIT compile or loading the
compiled kernel from the cache, CuPy's module load, oneDNN's primitive creation), then
one untimed warm-up call, then timed runs until both ``min_runs`` runs and
``min_time`` seconds are done, or ``max_runs`` runs. A call slower than
``slow_call_s`` needs only two timed runs: one such call already averages over its
own noise, and the default run must stay near two minutes.

Small cases rotate through several input sets (:func:`rotation_sets`) so that a
kernel never finds its inputs in the last-level cache left there by its previous
call, which a real network would not do for it either.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Default time budget per measurement (seconds of timed runs).
DEFAULT_MIN_TIME = 0.3
#: Default least number of timed runs.
DEFAULT_MIN_RUNS = 3
#: Default cap on timed runs (``--repeats``).
DEFAULT_MAX_RUNS = 50
#: A call this slow gets two timed runs instead of ``min_runs``.
SLOW_CALL_S = 1.0
#: Upper bound on input sets for rotation (memory and setup time).
MAX_INPUT_SETS = 16


@dataclass
class Timing:
    """The times of one measurement, in seconds."""

    first_call_s: float
    times_s: list[float] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return float(np.median(self.times_s))

    @property
    def q1_s(self) -> float:
        return float(np.percentile(self.times_s, 25))

    @property
    def q3_s(self) -> float:
        return float(np.percentile(self.times_s, 75))

    @property
    def min_s(self) -> float:
        return min(self.times_s)

    @property
    def max_s(self) -> float:
        return max(self.times_s)

    def summary(self) -> dict[str, float | int | list[float]]:
        """The statistics that go into a JSON result."""
        return {
            "first_call_s": self.first_call_s,
            "median_s": self.median_s,
            "q1_s": self.q1_s,
            "q3_s": self.q3_s,
            "min_s": self.min_s,
            "max_s": self.max_s,
            "runs": len(self.times_s),
            "times_s": list(self.times_s),
        }


class WallClock:
    """Times a host call with ``time.perf_counter`` (the call returns when its work is done)."""

    name = "perf_counter"

    def time(self, call: Callable[[], object]) -> float:
        start = time.perf_counter()
        call()
        return time.perf_counter() - start


class CudaEventClock:
    """Times GPU work with CUDA events recorded on the current stream (CuPy).

    The device is synchronised before the start event, so earlier work is not
    counted, and the stop event is waited for, so all of the call's work is.
    """

    name = "cuda events"

    def __init__(self) -> None:
        import cupy

        self._cupy = cupy

    def time(self, call: Callable[[], object]) -> float:
        cupy = self._cupy
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        cupy.cuda.Device().synchronize()
        start.record()
        call()
        stop.record()
        stop.synchronize()
        return cupy.cuda.get_elapsed_time(start, stop) / 1e3


class TorchCudaClock:
    """Times PyTorch's GPU work with CUDA events on its current stream, as
    :class:`CudaEventClock` does CuPy's."""

    name = "cuda events (torch)"

    def __init__(self) -> None:
        import torch

        self._cuda = torch.cuda

    def time(self, call: Callable[[], object]) -> float:
        cuda = self._cuda
        start, stop = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
        cuda.synchronize()
        start.record()
        call()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop) / 1e3


def clock_for(backend: str) -> CudaEventClock | TorchCudaClock:
    """The GPU clock of ``backend``'s library: PyTorch's events for the peer, CuPy's else."""
    return TorchCudaClock() if backend.startswith("torch") else CudaEventClock()


def measure(
    first_call: Callable[[], object],
    timed_call: Callable[[int], object],
    input_sets: int = 1,
    *,
    clock: WallClock | CudaEventClock | TorchCudaClock | None = None,
    min_time: float = DEFAULT_MIN_TIME,
    min_runs: int = DEFAULT_MIN_RUNS,
    max_runs: int = DEFAULT_MAX_RUNS,
) -> Timing:
    """Time ``first_call()`` once, then ``timed_call(i)`` repeatedly (``i``: the input set).

    Examples
    --------
    >>> timing = measure(lambda: None, lambda i: None, min_time=0.0, max_runs=3)
    >>> timing.summary()["runs"]
    3
    """
    clock = clock or WallClock()
    timing = Timing(first_call_s=clock.time(first_call))
    calls = 1
    if timing.first_call_s < SLOW_CALL_S:  # one warm-up on the next input set
        timed_call(calls % input_sets)
        calls += 1
    least = 2 if timing.first_call_s >= SLOW_CALL_S else min_runs
    least = max(1, min(least, max_runs))
    spent = 0.0
    while len(timing.times_s) < max_runs:
        seconds = clock.time(lambda set_index=calls % input_sets: timed_call(set_index))
        timing.times_s.append(seconds)
        calls += 1
        spent += seconds
        if len(timing.times_s) >= least and spent >= min_time:
            break
        if seconds >= SLOW_CALL_S and len(timing.times_s) >= least:
            break
    return timing


def last_level_cache_bytes() -> int:
    """The largest CPU cache on this machine (Linux sysfs), 32 MiB when unknown."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = entry.read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=32 * 2**20)


def rotation_sets(working_set_bytes: float, cache_bytes: int | None = None) -> int:
    """How many input sets to rotate through so their total exceeds twice the cache.

    Never fewer than two: with one set, the part of it still in the cache from the
    previous call (up to the cache's size) would flatter a memory-bound kernel by 10-15%.

    >>> rotation_sets(1e9, cache_bytes=32 * 2**20)
    2
    >>> rotation_sets(8 * 2**20, cache_bytes=32 * 2**20)
    8
    """
    cache_bytes = cache_bytes or last_level_cache_bytes()
    if working_set_bytes <= 0:
        return MAX_INPUT_SETS
    return max(2, min(MAX_INPUT_SETS, math.ceil(2 * cache_bytes / working_set_bytes)))


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
