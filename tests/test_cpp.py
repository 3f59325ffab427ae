"""What the ``cpp`` backend promises beyond the spec suite: safe from many Python threads,
strict about its arrays, and open about the SIMD code it runs."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fastcnn
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
