"""The registry's selection rules, availability reporting and the info command."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import fastcnn
import fastcnn.functional as F
from fastcnn import backends


def _which_backend_ran(monkeypatch, op="relu"):
    """Wrap every registered kernel of ``op`` to record which backend ran."""
    ran = []
    for (name, backend), kernel in list(backends._kernels.items()):
        if name == op:

            def spy(*args, _kernel=kernel, _backend=backend):
                ran.append(_backend)
                return _kernel(*args)

            monkeypatch.setitem(backends._kernels, (name, backend), spy)
    return ran


def test_reference_is_always_available():
    assert "reference" in fastcnn.available_backends()


def test_rules_in_order(monkeypatch):
    ran = _which_backend_ran(monkeypatch)
    x = np.ones(4, np.float32)
    fastest = next(b for b in backends.CPU_BACKENDS if backends.has_op("relu", b))
    F.relu(x)
    assert ran[-1] == fastest  # by array type
    monkeypatch.setenv("FASTCNN_BACKEND", "reference")
    F.relu(x)
    assert ran[-1] == "reference"  # environment
    other = "cpp" if backends.has_op("relu", "cpp") else "reference"
    with fastcnn.use_backend(other):
        F.relu(x)
        assert ran[-1] == other  # context beats environment
        F.relu(x, backend="reference")
        assert ran[-1] == "reference"  # keyword beats context


def test_array_type_falls_back_per_op(monkeypatch):
    """An op missing from the fastest backend runs on the next one that has it."""
    monkeypatch.delenv("FASTCNN_BACKEND", raising=False)
    fastest = backends.CPU_BACKENDS[0]
    monkeypatch.setattr(
        backends, "_kernels", {k: v for k, v in backends._kernels.items() if k != ("relu", fastest)}
    )
    np.testing.assert_array_equal(F.relu(np.array([-1.0, 2.0])), [0.0, 2.0])


def test_named_backend_never_falls_back(monkeypatch):
    monkeypatch.setattr(
        backends,
        "_kernels",
        {k: v for k, v in backends._kernels.items() if k != ("relu", "reference")},
    )
    with pytest.raises(NotImplementedError, match="does not implement"):
        F.relu(np.ones(3), backend="reference")


def test_unavailable_backend_says_what_to_install(monkeypatch):
    monkeypatch.setitem(backends._status, "cuda", (False, "CuPy is not installed"))
    with pytest.raises(fastcnn.BackendUnavailableError, match="pip install"):
        F.relu(np.ones(3), backend="cuda")
    with pytest.raises(fastcnn.BackendUnavailableError, match="pip install"):
        with fastcnn.use_backend("cuda"):
            pass


def test_environment_variable_must_name_a_backend(monkeypatch):
    monkeypatch.setenv("FASTCNN_BACKEND", "bogus")
    with pytest.raises(ValueError, match="backend must be one of"):
        F.relu(np.ones(3))


def test_context_is_per_thread():
    import threading

    seen = []
    with fastcnn.use_backend("reference"):
        thread = threading.Thread(target=lambda: seen.append(backends.requested_backend(None)))
        thread.start()
        thread.join()
    assert seen == [None]


def test_show_config_lists_every_backend(capsys):
    fastcnn.show_config()
    text = capsys.readouterr().out
    for name in backends.BACKENDS:
        assert name in text
    assert "cpu:" in text


def test_info_command():
    result = subprocess.run(
        [sys.executable, "-m", "fastcnn", "info"], capture_output=True, text=True, check=True
    )
    assert "backends:" in result.stdout


def test_every_full_backend_implements_every_op():
    """A forgotten import would otherwise fall back to another backend silently."""
    for record in backends.RECORDS:
        if record.full and backends.backend_status()[record.name][0]:
            assert backends.ops_of(record.name) == sorted(backends.SIGNATURES), record.name


def test_registering_an_unknown_op_or_backend_fails():
    with pytest.raises(ValueError, match="unknown op"):
        backends.register("conv3d", "numba")
    with pytest.raises(ValueError, match="unknown backend"):
        backends.register("relu", "fortran")


def test_a_backend_takes_the_arrays_of_its_device():
    with pytest.raises(TypeError, match="NumPy"):
        backends.select("relu", on_gpu=True, keyword="numba")
