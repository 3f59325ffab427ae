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


# Winograd F(4x4, 3x3): (x shape, weight shape, padding, groups). Partial tiles at the right
# and bottom, outputs under one tile, blocks of tiles across images and tile rows, output
# channels not a multiple of the micro-kernel's 6, input channels past the filter
# transform's step of 32, padding 3 (the input gradient's padding -1: grad_y cropped); up to
# WINOGRAD_FEW_TILES tiles (the filter transformed per task) and more (stored).
WINOGRAD_CASES = [
    ((2, 3, 9, 9), (4, 3, 3, 3), 1, 1),
    ((3, 5, 13, 7), (7, 5, 3, 3), 0, 1),
    ((1, 2, 3, 3), (5, 2, 3, 3), 0, 1),
    ((2, 4, 5, 6), (3, 4, 3, 3), 2, 1),
    ((2, 4, 8, 8), (4, 4, 3, 3), (0, 3), 1),
    ((1, 70, 11, 10), (13, 70, 3, 3), 1, 1),
    ((5, 6, 21, 19), (8, 6, 3, 3), 1, 1),
    ((3, 40, 24, 20), (14, 40, 3, 3), 1, 1),
    ((2, 6, 7, 7), (9, 2, 3, 3), 0, 3),
    ((2, 8, 9, 10), (8, 1, 3, 3), 1, 8),
]


def _winograd_gradient(grad_y, w, grad_x, padding, groups):
    """grad_x of the cpp Winograd kernel, written into the given (poisoned) array."""
    from fastcnn._shapes import conv2d_geometry
    from fastcnn.backends import cpp

    x_shape = grad_x.shape
    g = conv2d_geometry(x_shape, w.shape, None, 1, padding, 1, groups)
    cpp._ALGORITHMS["winograd"][1](grad_y, w, grad_x, g)
    return grad_x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("x_shape", "w_shape", "padding", "groups"), WINOGRAD_CASES)
def test_winograd_matches_the_float64_reference_writing_every_output(
    x_shape, w_shape, padding, groups, dtype
):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    args = {"padding": padding, "groups": groups}
    wide = (x.astype(np.float64), w.astype(np.float64))
    expected = F.conv2d(*wide, b.astype(np.float64), **args, backend="reference")
    out = np.full(expected.shape, np.nan, dtype)  # poisoned: every element must be written
    y = F.conv2d(x, w, b, **args, algo="winograd", backend="cpp", out=out)
    tolerance = 1e-4 if dtype == np.float32 else 1e-10
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(y, expected, rtol=0, atol=tolerance * scale)
    grad_y = rng.standard_normal(expected.shape).astype(dtype)
    (grad_x_expected, _, _) = F.conv2d_backward(
        grad_y.astype(np.float64), *wide, **args, backend="reference"
    )
    grad_x = _winograd_gradient(grad_y, w, np.full(x_shape, np.nan, dtype), padding, groups)
    scale = float(np.abs(grad_x_expected).max())
    np.testing.assert_allclose(grad_x, grad_x_expected, rtol=0, atol=tolerance * scale)


def test_winograd_is_bitwise_the_same_on_any_thread_count():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 16, 30, 26)).astype(np.float32)
    w = rng.standard_normal((20, 16, 3, 3)).astype(np.float32)
    grad_y = rng.standard_normal((3, 20, 30, 26)).astype(np.float32)
    before = _config.num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            fastcnn.set_num_threads(threads)
            y = F.conv2d(x, w, padding=1, algo="winograd", backend="cpp")
            grad_x = _winograd_gradient(grad_y, w, np.empty_like(x), 1, 1)
            results.append((y, grad_x))
    finally:
        fastcnn.set_num_threads(before)
    for y, grad_x in results[1:]:
        np.testing.assert_array_equal(y, results[0][0])
        np.testing.assert_array_equal(grad_x, results[0][1])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_winograd_puts_nan_and_inf_where_the_reference_does():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 8, 13, 13)).astype(np.float32)
    w = rng.standard_normal((5, 8, 3, 3)).astype(np.float32)
    x[0, 3, 5, 5], x[1, 2, 0, 12], x[1, 1, 7, 7] = np.nan, np.inf, -np.inf
    expected = F.conv2d(x.astype(np.float64), w.astype(np.float64), padding=1, backend="reference")
    y = F.conv2d(x, w, padding=1, algo="winograd", backend="cpp")
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    np.testing.assert_array_equal(np.isposinf(y), np.isposinf(expected))
    np.testing.assert_array_equal(np.isneginf(y), np.isneginf(expected))
    finite = np.isfinite(expected)
    scale = float(np.abs(expected[finite]).max())
    np.testing.assert_allclose(y[finite], expected[finite], rtol=0, atol=1e-4 * scale)


def test_auto_runs_winograd_where_it_pays():
    report = fastcnn.explain_conv2d((8, 64, 56, 56), (64, 64, 3, 3), padding=1, backend="cpp")
    assert report["forward"]["algorithm"] == "winograd"
    assert report["input_gradient"]["algorithm"] == "winograd"
    assert report["weight_gradient"]["algorithm"] != "winograd"
    for x, w, groups in (
        ((8, 64, 56, 56), (64, 32, 3, 3), 2),  # groups
        ((1, 512, 7, 7), (512, 512, 3, 3), 1),  # 4 tiles: under one block
        ((8, 64, 8, 8), (64, 64, 3, 3), 1),  # 4 tiles an image at 64 channels
    ):
        report = fastcnn.explain_conv2d(x, w, padding=1, groups=groups, backend="cpp")
        assert report["forward"]["algorithm"] != "winograd", (x, w)
    report = fastcnn.explain_conv2d((8, 512, 7, 7), (512, 512, 3, 3), padding=1, backend="cpp")
    assert report["forward"]["algorithm"] == "winograd"
