"""What the ``cpp`` backend promises beyond the spec suite: safe from many Python threads,
strict about its arrays, and open about the SIMD code it runs."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import fastcnn
import fastcnn.functional as F
from fastcnn import _config
from fastcnn.backends import has_op
from fastcnn.testing.harness import truth
from fastcnn.testing.specs import SPECS

_cpp = pytest.importorskip("fastcnn._cpp")


def _cpp_cases():
    """(spec, its largest case) per op of the spec table that cpp implements."""
    for spec in SPECS:
        if has_op(spec.ops[0], "cpp"):
            case = max(spec.cases, key=lambda c: sum(np.prod(s) for s in c.shapes.values()))
            yield spec, case


def test_eight_python_threads_calling_every_op_get_the_reference():
    rng = np.random.default_rng(0)
    jobs = []
    for spec, case in _cpp_cases():
        for dtype in (np.float32, np.float64):
            inputs = spec.make_inputs(case, dtype, rng)
            expected = spec.forward(inputs, truth(case.params), "reference")
            jobs.append(
                (spec, case, inputs, np.asarray(expected), spec.tolerance[np.dtype(dtype).name])
            )
    assert jobs, "cpp implements no op"
    barrier = threading.Barrier(8)
    failures = []

    def work(offset):
        barrier.wait()
        for spec, case, inputs, expected, tolerance in jobs[offset:] + jobs[:offset]:
            actual = np.asarray(spec.forward(inputs, case.params, "cpp"))
            scale = max(float(np.nanmax(np.abs(expected), initial=0.0)), 1.0)
            if not np.allclose(actual, expected, rtol=0, atol=tolerance * scale, equal_nan=True):
                failures.append((spec.name, case.name, actual.dtype))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def test_an_output_of_another_dtype_or_layout_is_refused_not_copied():
    x = np.ones(8, np.float32)
    with pytest.raises(TypeError):
        _cpp.relu_float32(x, np.empty(8, np.float64), 1)
    with pytest.raises(TypeError):
        _cpp.relu_float32(x, np.empty(16, np.float32)[::2], 1)
    with pytest.raises(ValueError, match="lengths differ"):
        _cpp.relu_float32(x, np.empty(7, np.float32), 1)
    with pytest.raises(ValueError, match="threads"):
        _cpp.relu_float32(x, np.empty(8, np.float32), 0)


def test_a_two_dimensional_output_of_another_layout_or_shape_is_refused():
    x = np.ones((4, 6), np.float32)
    with pytest.raises(TypeError):
        _cpp.softmax_float32(x, np.empty((6, 4), np.float32).T, 1)
    with pytest.raises(ValueError, match="shape"):
        _cpp.softmax_float32(x, np.empty((4, 5), np.float32), 1)
    with pytest.raises(ValueError, match="shape"):
        _cpp.linear_float32(x, np.ones((3, 5), np.float32), None, np.empty((4, 3), np.float32), 1)
    with pytest.raises(ValueError, match="lengths differ"):
        bias = np.ones(2, np.float32)
        _cpp.linear_float32(x, np.ones((3, 6), np.float32), bias, np.empty((4, 3), np.float32), 1)


def test_read_only_inputs_are_taken():
    x = np.linspace(-1, 1, 9, dtype=np.float32)
    x.setflags(write=False)
    np.testing.assert_array_equal(fastcnn.functional.relu(x, backend="cpp"), np.maximum(x, 0))


def test_the_simd_path_is_the_cpu_s_and_is_reported():
    path = _cpp.simd_path()
    features = set(_config.cpu_features())
    expected = "baseline"
    if {"avx2", "fma"} <= features:
        expected = "avx2"
    if {"avx512f", "avx512vl", "avx512bw", "avx512dq"} <= features:
        expected = "avx512"
    if features:
        assert path == expected, features
    assert f"cpp_simd: {path}" in _config.config_text()


def test_the_thread_count_follows_set_num_threads(monkeypatch):
    before = _config.num_threads()
    monkeypatch.setattr(_config, "_threads", None)
    try:
        assert _config.num_threads() == _config.usable_cores()
        fastcnn.set_num_threads(1)
        assert _config.num_threads() == 1
    finally:
        # Numba's and BLAS's counts too (monkeypatch restores only fastcnn's): left at 1,
        # later tests would miss the paths that split work over threads.
        fastcnn.set_num_threads(before)


@pytest.mark.parametrize("algo", ["small_channels", "im2col", "direct"])
@pytest.mark.parametrize(
    ("x_shape", "w_shape", "params"),
    [
        ((5, 3, 17, 19), (8, 3, 3, 3), {"padding": 1}),  # staged: padding
        ((4, 2, 20, 9), (7, 2, 5, 3), {}),  # in place: the last block is staged
        ((3, 4, 15, 16), (4, 1, 3, 3), {"stride": 2, "padding": 1, "groups": 4}),
    ],
)
def test_convolutions_are_bitwise_the_same_on_any_thread_count(algo, x_shape, w_shape, params):
    """conv2d.cpp and small_channels.cpp sum every element in a fixed order: the thread
    count changes which thread computes it, not how (the weight gradient of im2col splits
    images over threads, so it is held only to the reference)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    y = F.conv2d(x, w, **params, backend="reference")
    grad_y = rng.standard_normal(y.shape).astype(np.float32)
    expected = F.conv2d_backward(grad_y, x, w, **params, backend="reference")
    input_algo = algo if params.get("stride", 1) == 1 or algo != "small_channels" else "im2col"
    before = _config.num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            fastcnn.set_num_threads(threads)
            forward = F.conv2d(x, w, **params, algo=algo, backend="cpp")
            grads = F.conv2d_backward(
                grad_y, x, w, **params, algo=(input_algo, algo), backend="cpp"
            )
            results.append((forward, *grads))
    finally:
        fastcnn.set_num_threads(before)
    for actual, reference in zip(results[0], (y, *expected), strict=True):
        np.testing.assert_allclose(actual, reference, atol=1e-4 * np.abs(reference).max())
    for other in results[1:]:
        for index, (first, second) in enumerate(zip(results[0], other, strict=True)):
            if algo == "im2col" and index == 2:
                continue
            np.testing.assert_array_equal(first, second)


def test_the_strided_input_gradient_by_stride_phases_matches_the_reference():
    """small_channels takes a strided input gradient as one stride-1 convolution of grad_y
    per phase of grad_x, over the taps that reach it: every stride, dilation, padding and
    group count, phases no tap reaches (1x1 / 2) and taps that skip phases (dilation 2)."""
    rng = np.random.default_rng(3)
    checked = 0
    for (C, K, G), (R, S), stride, dilation, padding in itertools.product(
        ((4, 4, 4), (3, 6, 1), (2, 4, 2)),
        ((3, 3), (1, 1), (2, 3), (5, 4)),
        ((2, 2), (3, 1), (2, 3)),
        ((1, 1), (2, 1), (2, 3)),
        ((0, 0), (1, 2)),
    ):
        x = rng.standard_normal((2, C, 13, 11))
        w = rng.standard_normal((K, C // G, R, S))
        params = {"stride": stride, "dilation": dilation, "padding": padding, "groups": G}
        try:
            y = F.conv2d(x, w, **params, backend="reference")
        except ValueError:  # the padded input smaller than the dilated kernel
            continue
        grad_y = rng.standard_normal(y.shape)
        expected = F.conv2d_backward(grad_y, x, w, **params, backend="reference")[0]
        actual = F.conv2d_backward(
            grad_y, x, w, **params, algo=("small_channels", "direct"), backend="cpp"
        )[0]
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-12 * np.abs(expected).max())
        checked += 1
    assert checked > 150


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc")
def test_numba_and_cpp_share_one_openmp_runtime(tmp_path):
    """Two spinning thread pools on 2 cores slow each other several-fold; the numba backend
    (threading layer omp) and the extension load the same libgomp, so a process has one
    OpenMP runtime and one pool whichever backend ran last."""
    pytest.importorskip("numba")
    script = (
        "import numpy as np, numba, fastcnn.functional as F\n"
        "x = np.ones(1 << 20, np.float32)\n"
        "F.relu(x, backend='numba'); F.relu(x, backend='cpp'); F.relu(x, backend='numba')\n"
        "maps = open('/proc/self/maps').read().split('\\n')\n"
        "runtimes = {line.split()[-1] for line in maps if 'libgomp' in line or 'libiomp' in line}\n"
        "print(numba.threading_layer(), len(runtimes))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    layer, runtimes = result.stdout.split()
    if layer != "omp":
        pytest.skip(f"numba runs its {layer} threading layer here")
    assert runtimes == "1", result.stdout
