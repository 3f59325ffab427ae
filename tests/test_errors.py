"""Bad input gets a ValueError or TypeError naming the argument, before any kernel runs,
on every backend: the spec table's error cases plus the generic dtype, ndim and
array-type checks derived from each op's inputs."""

from __future__ import annotations

import numpy as np
import pytest

import fastcnn.functional as F
from fastcnn.backends import available_backends
from fastcnn.testing.specs import SPECS, ErrorCase

BACKENDS = [name for name in available_backends() if name != "cuda"]
BAD_DTYPES = (np.int32, np.int64, np.bool_, np.float16, np.complex64, object)


def _set(name, value_of):
    return lambda inputs: inputs.update({name: value_of(inputs[name])})


def names(argument: str) -> str:
    """A message that starts by naming the argument."""
    return rf"^{argument} (must|has)"


def _generic_errors(spec):
    """Errors every op must raise, derived from the names of its inputs."""
    base = spec.cases[0]
    floats = [n for n in spec.inputs if n in base.shapes and n not in spec.integer + spec.masks]
    for name in spec.masks:
        yield ErrorCase(
            f"{name} float32", TypeError, names(name), mutate=_set(name, lambda a: a.astype("f4"))
        )
        yield ErrorCase(
            f"{name} as list", TypeError, names(name), mutate=_set(name, np.ndarray.tolist)
        )
    for name in floats:
        for dtype in BAD_DTYPES:
            yield ErrorCase(
                f"{name} {np.dtype(dtype).name}",
                TypeError,
                names(name),
                mutate=_set(name, lambda a, d=dtype: a.astype(d)),
            )
        yield ErrorCase(
            f"{name} as list", TypeError, names(name), mutate=_set(name, np.ndarray.tolist)
        )
        if name in spec.ndim_checked:
            yield ErrorCase(
                f"{name} with an extra axis",
                ValueError,
                names(name),
                mutate=_set(name, lambda a: a[None]),
            )
    for name in floats[1:]:
        yield ErrorCase(
            f"{name} float64 beside float32",
            TypeError,
            names(name),
            mutate=_set(name, lambda a: a.astype(np.float64)),
        )


def _expand():
    for spec in SPECS:
        for error in (*spec.errors, *_generic_errors(spec)):
            for backend in BACKENDS:
                yield pytest.param(
                    spec, error, backend, id=f"{spec.name}-{error.name}-{backend}".replace(" ", "_")
                )


@pytest.mark.parametrize(("spec", "error", "backend"), list(_expand()))
def test_bad_input_raises(spec, error, backend, rng):
    base = spec.cases[0]
    inputs = spec.make_inputs(base, np.float32, rng)
    if error.mutate is not None:
        error.mutate(inputs)
    params = {**base.params, **error.params}
    with pytest.raises(error.exception, match=error.match):
        spec.forward(inputs, params, backend)


def _backward_expand():
    for spec in SPECS:
        if spec.backward is None:
            continue
        for backend in BACKENDS:
            yield pytest.param(spec, backend, id=f"{spec.name}-{backend}")


@pytest.mark.parametrize(("spec", "backend"), list(_backward_expand()))
def test_backward_checks_its_gradient(spec, backend, rng):
    case = spec.cases[0]
    inputs = spec.make_inputs(case, np.float32, rng)
    y = spec.forward(inputs, case.params, "reference")
    if y.ndim == 0:  # a reduced loss takes a scalar gradient
        pytest.skip("scalar gradient")
    with pytest.raises(ValueError, match="grad"):
        spec.backward(inputs, case.params, np.ones((*y.shape, 2), y.dtype), y, backend)
    with pytest.raises(TypeError, match="grad"):
        spec.backward(inputs, case.params, np.ones(y.shape, np.int32), y, backend)


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="backend must be one of"):
        F.relu(np.ones(3), backend="fortran")


def test_indices_are_checked(rng):
    x = rng.standard_normal((1, 2, 4, 4))
    y, indices = F.max_pool2d(x, 2, return_indices=True)
    with pytest.raises(ValueError, match="indices"):
        F.max_pool2d_backward(np.ones_like(y), x, 2, indices=indices + 100)
    with pytest.raises(TypeError, match="indices"):
        F.max_pool2d_backward(np.ones_like(y), x, 2, indices=indices.astype(np.float64))


def test_out_is_checked():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="out"):
        F.relu(x, out=np.empty((3, 2), np.float32))
    with pytest.raises(ValueError, match="out"):
        F.relu(x, out=np.empty((2, 3), np.float64))
    with pytest.raises(ValueError, match="out"):
        F.softmax(x, out=x)
    assert F.relu(x, out=x) is x  # elementwise ops may work in place


def test_numpy_and_cupy_mixed(monkeypatch):
    """A call mixing two array libraries is refused (a stand-in plays CuPy here)."""
    import sys
    import types

    class FakeArray:
        dtype = np.dtype(np.float32)
        shape = (3,)

    fake = types.ModuleType("cupy")
    fake.ndarray = FakeArray
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(TypeError, match="mixed"):
        F.linear(np.ones((2, 3), np.float32), FakeArray())
