"""Does a call on one CPU backend slow the next call on the other? Two spinning thread
pools on 2 cores slow each other several-fold (the Numba backend's lesson), so a cpp call
is timed right after a numba call and the other way round, against each one after itself::

    python benchmarks/interleave.py                 # every pair, 2 threads, median of 41
    python benchmarks/interleave.py --threads 2 --repeats 101

Each row times one op on backend B, the call immediately after either a call of the same op
on B ("after itself") or on the other backend ("after the other"), and gives the ratio of
the two medians: 1.0 means the other backend's pool costs B nothing. fastcnn's numba and cpp
backends share one OpenMP runtime (Numba's ``omp`` threading layer and the extension link
the same libgomp), so there is one pool to spin, not two.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fastcnn
import fastcnn.functional as F
from fastcnn import _config


def _cases(rng):
    """name -> call(backend): ops whose kernels enter the thread pool."""
    x = rng.standard_normal((8, 64, 56, 56)).astype(np.float32)
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    w1 = rng.standard_normal((64, 64, 1, 1)).astype(np.float32)
    logits = rng.standard_normal((256, 1000)).astype(np.float32)
    return {
        "relu 8x64x56x56": lambda backend: F.relu(x, backend=backend),
        "max_pool2d 3x3/2": lambda backend: F.max_pool2d(x, 3, 2, 1, backend=backend),
        "conv2d 1x1 64->64": lambda backend: F.conv2d(x, w1, backend=backend),
        "conv2d 3x3 64->64": lambda backend: F.conv2d(x, w, padding=1, backend=backend),
        "softmax 256x1000": lambda backend: F.softmax(logits, dim=1, backend=backend),
    }


def _timed(call, backend: str, before: str, repeats: int) -> float:
    """Median seconds of ``call(backend)`` run right after ``call(before)``."""
    times = []
    for _ in range(repeats):
        call(before)
        start = time.perf_counter()
        call(backend)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--repeats", type=int, default=41)
    args = parser.parse_args()
    if args.threads:
        fastcnn.set_num_threads(args.threads)
    cases = _cases(np.random.default_rng(0))
    pairs = (("cpp", "numba"), ("numba", "cpp"))
    print(f"threads {_config.num_threads()}, median of {args.repeats}, milliseconds")
    print(f"{'op':<20} {'backend':<7} {'after itself':>12} {'after the other':>16} {'ratio':>6}")
    for name, call in cases.items():
        for backend, other in pairs:
            for b in (backend, other):  # compile and warm both first
                call(b)
                call(b)
            alone = _timed(call, backend, backend, args.repeats)
            after = _timed(call, backend, other, args.repeats)
            print(
                f"{name:<20} {backend:<7} {alone * 1e3:>12.3f} {after * 1e3:>16.3f} "
                f"{after / alone:>6.2f}"
            )


if __name__ == "__main__":
    main()
