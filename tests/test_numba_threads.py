"""Numba's parallel kernels called from many Python threads at once (thread-safe layer)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fastcnn.functional as F

pytest.importorskip("numba")

# (x shape, weight shape, parameters, algorithm): different shapes and algorithms.
CALLS = [
    ((2, 8, 12, 12), (16, 8, 3, 3), {"padding": 1}, "direct"),
    ((2, 8, 12, 12), (16, 8, 3, 3), {"padding": 1}, "winograd"),
    ((3, 16, 7, 7), (24, 16, 1, 1), {}, "im2col"),
    ((2, 6, 11, 11), (6, 1, 3, 3), {"groups": 6, "stride": 2}, "depthwise"),
    ((1, 3, 23, 23), (8, 3, 7, 7), {"stride": 2, "padding": 3}, "auto"),
    ((4, 1, 28, 28), (6, 1, 5, 5), {}, "auto"),
    ((2, 6, 9, 10), (9, 2, 3, 3), {"groups": 3, "dilation": 2}, "im2col"),
    ((2, 4, 8, 8), (4, 4, 4, 4), {"padding": "same"}, "direct"),
]


def test_eight_threads_calling_conv2d_concurrently_get_the_reference():
    rng = np.random.default_rng(0)
    jobs = []
    for x_shape, w_shape, params, algo in CALLS:
        x = rng.standard_normal(x_shape).astype(np.float32)
        w = rng.standard_normal(w_shape).astype(np.float32)
        expected = F.conv2d(x, w, **params, backend="reference")
        jobs.append((x, w, params, algo, expected))
    # Compile everything first, so the threads race in the kernels, not the compiler.
    for x, w, params, algo, _ in jobs:
        F.conv2d(x, w, **params, algo=algo, backend="numba")

    barrier = threading.Barrier(len(jobs))
    failures = []

    def work(x, w, params, algo, expected):
        barrier.wait()
        for _ in range(20):
            actual = F.conv2d(x, w, **params, algo=algo, backend="numba")
            scale = max(np.abs(expected).max(), 1.0)
            if not np.allclose(actual, expected, rtol=0, atol=1e-4 * scale):
                failures.append((algo, x.shape, float(np.abs(actual - expected).max())))
                return

    threads = [threading.Thread(target=work, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def test_backward_from_several_threads():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 8, 10, 10)).astype(np.float32)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((2, 8, 10, 10)).astype(np.float32)
    expected = F.conv2d_backward(gy, x, w, padding=1, backend="reference")
    F.conv2d_backward(gy, x, w, padding=1, backend="numba")
    results = [None] * 4

    def work(i):
        algo = ("direct", "im2col", ("winograd", "direct"), "auto")[i]
        results[i] = F.conv2d_backward(gy, x, w, padding=1, algo=algo, backend="numba")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        for actual, truth in zip(result[:2], expected[:2], strict=True):
            np.testing.assert_allclose(actual, truth, atol=1e-4 * np.abs(truth).max())
