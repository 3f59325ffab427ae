"""fastcnn.autotune: timing once per shape, the on-disk cache, its key and its safety."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

import fastcnn
import fastcnn.functional as F
from fastcnn._shapes import conv2d_geometry
from fastcnn.autotune import cache_path, clear_memory, is_enabled

pytest.importorskip("numba")
from fastcnn.backends.numba import conv2d as numba_conv2d


@pytest.fixture
def tuning(tmp_path, monkeypatch):
    """Autotuning on, with a fresh cache directory and an empty memory."""
    monkeypatch.setenv("FASTCNN_CACHE_DIR", str(tmp_path))
    clear_memory()
    fastcnn.autotune(True)
    yield tmp_path / "autotune.json"
    fastcnn.autotune(False)
    clear_memory()


def _inputs(shape=(2, 16, 10, 10), kernel=(16, 16, 3, 3)):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(kernel).astype(np.float32)
    return x, w


def _spy_on_algorithms(monkeypatch):
    """Record the algorithm of every forward kernel run."""
    ran = []
    for name, module in numba_conv2d.ALGORITHMS.items():

        def spy(*args, _run=module.forward, _name=name, **kwargs):
            ran.append(_name)
            return _run(*args, **kwargs)

        monkeypatch.setattr(module, "forward", spy)
    return ran


def test_off_by_default_and_switchable():
    assert not is_enabled()
    fastcnn.autotune(True)
    assert is_enabled()
    fastcnn.autotune(False)
    assert not is_enabled()
    with pytest.raises(TypeError, match="enable"):
        fastcnn.autotune("yes")


def test_times_each_candidate_once_then_remembers(tuning, monkeypatch):
    ran = _spy_on_algorithms(monkeypatch)
    x, w = _inputs()
    expected = F.conv2d(x, w, padding=1, backend="reference")
    first = F.conv2d(x, w, padding=1, backend="numba")
    np.testing.assert_allclose(first, expected, atol=1e-4 * np.abs(expected).max())
    timed = set(ran)
    assert {"direct", "im2col", "winograd"} <= timed  # every candidate was timed
    ran.clear()
    F.conv2d(x, w, padding=1, backend="numba")
    assert len(ran) == 1  # second call: the remembered winner only
    stored = json.loads(tuning.read_text())
    assert list(stored.values()) == [ran[0]]


def test_cache_file_is_reused_by_a_fresh_process_state(tuning, monkeypatch):
    x, w = _inputs()
    F.conv2d(x, w, padding=1, backend="numba")
    stored = json.loads(tuning.read_text())
    (key,) = stored
    # Force a different winner in the file; a fresh memory must read it, not time.
    stored[key] = "im2col"
    tuning.write_text(json.dumps(stored))
    clear_memory()
    ran = _spy_on_algorithms(monkeypatch)
    F.conv2d(x, w, padding=1, backend="numba")
    assert ran == ["im2col"]


def test_key_names_shape_dtype_direction_backend_cpu_and_version(tuning):
    x, w = _inputs()
    F.conv2d(x, w, padding=1, backend="numba")
    F.conv2d(x.astype(np.float64), w.astype(np.float64), padding=1, backend="numba")
    gy = np.ones((2, 16, 10, 10), np.float32)
    F.conv2d_backward(gy, x, w, padding=1, backend="numba")
    keys = list(json.loads(tuning.read_text()))
    # forward in two dtypes; the backward tunes each gradient on its own
    assert len(keys) == 4
    for key in keys:
        assert "numba" in key and fastcnn.__version__ in key
    assert any("float64" in k for k in keys)
    assert any("|input_gradient|" in k for k in keys)
    assert any("|weight_gradient|" in k for k in keys)


def test_explicit_algorithm_is_not_tuned(tuning, monkeypatch):
    ran = _spy_on_algorithms(monkeypatch)
    x, w = _inputs()
    F.conv2d(x, w, padding=1, algo="direct", backend="numba")
    assert ran == ["direct"]
    assert not tuning.exists()


def test_unwritable_cache_dir_falls_back(monkeypatch, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("FASTCNN_CACHE_DIR", str(blocked / "sub"))
    path = cache_path()
    assert blocked not in path.parents
    assert path.name == "autotune.json"


def test_corrupt_cache_file_is_ignored(tuning):
    tuning.write_text("{ not json")
    x, w = _inputs()
    F.conv2d(x, w, padding=1, backend="numba")
    assert json.loads(tuning.read_text())  # rewritten whole


def test_concurrent_threads_tune_safely(tuning):
    shapes = [((2, 16, 10, 10), (16, 16, 3, 3)), ((2, 16, 9, 9), (24, 16, 1, 1))]
    errors = []

    def work(index):
        try:
            x, w = _inputs(*shapes[index % 2])
            padding = 1 if w.shape[2] == 3 else 0
            expected = F.conv2d(x, w, padding=padding, backend="reference")
            actual = F.conv2d(x, w, padding=padding, backend="numba")
            np.testing.assert_allclose(actual, expected, atol=1e-4 * np.abs(expected).max())
        except Exception as error:  # reported below, in the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(json.loads(tuning.read_text())) == 2


def test_cuda_backends_tune_per_device(tuning):
    """The CUDA backends time their own algorithms and key the choice by their device
    (the GPU's name; under the emulator, the CPU it emulates on)."""
    if "cuda-emu" not in fastcnn.available_backends():
        pytest.skip("cuda-emu is not available")
    from fastcnn.backends.cuda.emu import RUNTIME

    x, w = _inputs((2, 8, 9, 9), (8, 8, 3, 3))
    y = F.conv2d(x, w, padding=1, backend="cuda-emu")
    F.conv2d_backward(np.ones_like(y), x, w, padding=1, backend="cuda-emu")
    stored = json.loads(tuning.read_text())
    assert len(stored) == 3  # each direction on its own
    for key, name in stored.items():
        assert key.startswith("cuda-emu|") and RUNTIME.device_name() in key
        assert name in ("direct", "implicit_gemm")
    np.testing.assert_allclose(y, F.conv2d(x, w, padding=1, backend="reference"), atol=1e-4)


def test_the_cpp_backend_tunes_its_own_algorithms(tuning, monkeypatch):
    """cpp times each of its algorithms that takes the case, once per shape, keyed by
    backend, and the second call runs the winner alone."""
    cpp = pytest.importorskip("fastcnn.backends.cpp")
    ran = []
    for name, (forward, *gradients) in list(cpp._ALGORITHMS.items()):

        def spy(*args, _run=forward, _name=name):
            ran.append(_name)
            return _run(*args)

        monkeypatch.setitem(cpp._ALGORITHMS, name, (spy, *gradients))
    x, w = _inputs((2, 3, 12, 12), (8, 3, 3, 3))
    expected = F.conv2d(x, w, padding=1, backend="reference")
    first = F.conv2d(x, w, padding=1, backend="cpp")
    np.testing.assert_allclose(first, expected, atol=1e-4 * np.abs(expected).max())
    g = conv2d_geometry(x.shape, w.shape, None, 1, 1, 1, 1)
    takes = {name for name in cpp.CONV2D_ALGORITHMS if cpp.CONV2D_TAKES[name](g, "forward")}
    assert set(ran) == takes  # every algorithm that takes the forward pass was timed
    ran.clear()
    F.conv2d(x, w, padding=1, backend="cpp")
    stored = json.loads(tuning.read_text())
    ((key, winner),) = stored.items()
    assert key.startswith("cpp|") and ran == [winner]
