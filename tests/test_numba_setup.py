"""How the Numba backend configures Numba: cache location, threading layer, threads."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

numba = pytest.importorskip("numba")

import fastcnn  # noqa: E402
from fastcnn.backends.numba import _setup  # noqa: E402


def test_unwritable_cache_falls_back(monkeypatch, tmp_path):
    """With the package's __pycache__ unwritable, the cache moves to a writable place."""
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setattr(numba.config, "CACHE_DIR", "")
    from fastcnn import _cache_dirs

    monkeypatch.setenv("FASTCNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_cache_dirs, "writable", lambda d: str(d).startswith(str(tmp_path)))
    _setup.configure()
    assert numba.config.CACHE_DIR.startswith(str(tmp_path))


def test_unwritable_cache_everywhere_still_imports(tmp_path):
    """A read-only cache directory given by the user does not break import or a call."""
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    code = (
        "import numpy as np, fastcnn; "
        "print(fastcnn.functional.relu(np.array([-1.0, 2.0]), backend='numba'))"
    )
    env = {"NUMBA_CACHE_DIR": str(blocked / "cache"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "[0. 2.]" in result.stdout


def test_threading_layer_is_thread_safe():
    """workqueue would abort the process when two Python threads run parallel code."""

    @_setup.jit(parallel=True, cache=False)
    def total(values):
        result = 0.0
        for i in numba.prange(values.size):
            result += values[i]
        return result

    assert total(np.ones(1000)) == 1000.0
    assert numba.threading_layer() in ("omp", "tbb")


def test_set_num_threads_sets_numba_and_blas():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = numba.get_num_threads()
    try:
        fastcnn.set_num_threads(1)
        assert numba.get_num_threads() == 1
        blas = [p for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
        assert all(p["num_threads"] == 1 for p in blas)
    finally:
        fastcnn.set_num_threads(before)
    with pytest.raises(ValueError, match="n must be"):
        fastcnn.set_num_threads(0)
