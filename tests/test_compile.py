"""Compilation: announced on stderr, lazy per algorithm, and payable ahead of time."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import fastcnn
from fastcnn import _compile
from fastcnn.backends import algorithms
from fastcnn.testing.specs import SPECS

pytest.importorskip("numba")


def _python(code: str, cache_dir, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), **env}
    environment.pop("FASTCNN_QUIET", None)
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, check=True
    )


_RELU = "import numpy as np, fastcnn.functional as F; F.relu(np.ones(5, np.float32))"


def test_the_first_compilation_is_announced_once_and_a_warm_cache_is_silent(tmp_path):
    cold = _python(_RELU + "; F.relu(np.ones(5))", tmp_path)  # float32, then float64
    assert cold.stderr.count("fastcnn: compiling Numba kernels") == 1, cold.stderr
    assert "python -m fastcnn compile" in cold.stderr
    warm = _python(_RELU, tmp_path)
    assert "compiling" not in warm.stderr
    quiet = _python(_RELU, tmp_path / "other", FASTCNN_QUIET="1")
    assert quiet.stderr == ""


def test_one_algorithm_compiles_only_its_own_kernels(tmp_path):
    code = """
import numpy as np, fastcnn.functional as F
from fastcnn.backends.numba import im2col, winograd, depthwise, small_channels
x, w = np.ones((1, 8, 12, 12), np.float32), np.ones((8, 8, 3, 3), np.float32)
F.conv2d(x, w, padding=1, algo="direct", backend="numba")
kernels = [im2col._forward, winograd._input_transform, depthwise._ring_forward,
           small_channels._forward_tiles]
print([len(k.signatures) for k in kernels])
"""
    result = _python(code, tmp_path, FASTCNN_QUIET="1")
    assert result.stdout.strip() == "[0, 0, 0, 0]"


def test_a_warm_cache_loads_kernels_without_numba_s_compiler_registries(tmp_path):
    # Loading from the cache skips Numba's registry refresh (numba.np.linalg imports
    # scipy.linalg: a third of a warm first call); the loaded kernels compute the same.
    code = """
import sys, numpy as np, fastcnn.functional as F
rng = np.random.default_rng(0)
x, w = rng.standard_normal((2, 3, 9, 9), np.float32), rng.standard_normal((4, 3, 3, 3), np.float32)
y = F.conv2d(x, w, padding=1, backend="numba")
print(y.tobytes().hex(), "scipy.linalg" in sys.modules)
"""
    cold = _python(code, tmp_path, FASTCNN_QUIET="1").stdout.split()
    warm = _python(code, tmp_path, FASTCNN_QUIET="1").stdout.split()
    assert warm[0] == cold[0]
    assert warm[1] == "False"


_PROBE = """
from fastcnn.backends.numba._setup import jit

@jit
def first(x):
    return x + 1.0

@jit
def second(x):
    return x * 2.0

def compile_second():
    second(1.0)
"""

_ASIDE = """
import aside_probe as probe
from fastcnn.backends.numba import _aside
with _aside.aside("aside_probe:compile_second", ()):
    probe.first(1.0)
    started = _aside.started_worker()
probe.second(1.0)
print(started, sum(probe.second.stats.cache_hits.values()), len(probe.second.stats.cache_misses))
"""


@pytest.mark.parametrize("setting", ["1", "0"])
def test_a_cold_call_compiles_its_second_kernel_in_a_worker(tmp_path, setting):
    # A compilation inside the block starts a worker that compiles (and caches) the
    # second kernel, which this process then loads; a warm cache starts no worker.
    (tmp_path / "aside_probe.py").write_text(_PROBE)
    env = {"PYTHONPATH": str(tmp_path), "FASTCNN_QUIET": "1", "FASTCNN_COMPILE_ASIDE": setting}
    if setting == "1" and len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: compiles in this process only")
    cold = _python(_ASIDE, tmp_path / "cache", **env).stdout.split()
    assert cold == (["True", "1", "0"] if setting == "1" else ["False", "0", "1"])
    warm = _python(_ASIDE, tmp_path / "cache", **env).stdout.split()
    assert warm == ["False", "1", "0"]


def test_conv2d_backward_compiles_its_weight_gradient_aside(tmp_path):
    # The worker's job compiles the very specialisation the call then loads.
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: compiles in this process only")
    code = """
import numpy as np, fastcnn.functional as F
from fastcnn.backends.numba import small_channels as sc
from fastcnn import _census
rng = np.random.default_rng(0)
shapes = (2, 3, 16, 16), (4, 3, 3, 3), (2, 4, 16, 16)
x, w, gy = (rng.standard_normal(shape, np.float32) for shape in shapes)
with _census.counting() as ran:
    F.conv2d_backward(gy, x, w, padding=1)
stats = sc._weight_gradient.stats
print(ran[("numba", "small_channels.weight_gradient")] == 1, sum(stats.cache_hits.values()),
      len(stats.cache_misses))
"""
    result = _python(code, tmp_path, FASTCNN_QUIET="1").stdout.split()
    assert result == ["True", "1", "0"]


def test_compile_ahead_covers_every_op_and_algorithm():
    units = _compile._work(["numba"])
    assert {name for name, _, _ in units} == {spec.name for spec in SPECS}
    conv2d = {algo for name, _, algo in units if name == "conv2d"}
    assert conv2d == set(algorithms("conv2d", "numba"))


def test_compile_kernels_checks_its_arguments():
    with pytest.raises(ValueError, match="dtypes"):
        fastcnn.compile_kernels(["float16"])
    with pytest.raises(TypeError, match="progress"):
        fastcnn.compile_kernels(progress="yes")


def test_compile_kernels_runs_one_unit(monkeypatch):
    monkeypatch.setattr(_compile, "_work", lambda backends: [("relu", "numba", None)])
    timings = fastcnn.compile_kernels(["float32"], processes=1, progress=False)
    assert list(timings) == ["relu numba"]


def test_version_flag():
    result = subprocess.run(
        [sys.executable, "-m", "fastcnn", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == f"fastcnn {fastcnn.__version__}"
