"""Every op of the spec table on every available backend against the float64 reference:
forward and every gradient, float32 and float64, fresh random inputs, poisoned outputs,
contiguous, strided and negative-stride inputs, NaN propagation."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastcnn.functional as F
from fastcnn.backends import available_backends, has_op
from fastcnn.testing import assert_close, float64_inputs, poison_outputs
from fastcnn.testing.compare import LAYOUTS
from fastcnn.testing.harness import algorithm_cases, check_backward, check_forward
from fastcnn.testing.specs import SPECS

DTYPES = ("float32", "float64")
# The reference is the truth itself; it is checked against PyTorch and finite
# differences in test_reference.py.
BACKENDS = [name for name in available_backends() if name != "reference"]


def _expand(direction: str):
    """(spec, case, backend) for every case, on every backend that has the op, once per
    algorithm that takes the case (see harness.algorithm_cases)."""
    for spec in SPECS:
        op = spec.ops[0] if direction == "forward" else spec.ops[1]
        if op is None:
            continue
        for backend in BACKENDS:
            if not has_op(op, backend):
                continue
            for case in spec.cases:
                for variant in algorithm_cases(spec, case, backend, direction):
                    algo = variant.params.get("algo")
                    label = backend if algo is None else f"{backend}:{_label(algo)}"
                    yield pytest.param(
                        spec, variant, backend,
                        id=f"{spec.name}-{case.name}-{label}".replace(" ", "_"),
                    )  # fmt: skip


def _label(algo) -> str:
    return algo if isinstance(algo, str) else "+".join(algo)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("spec", "case", "backend"), list(_expand("forward")))
def test_forward(spec, case, backend, dtype, layout, rng):
    check_forward(spec, case, backend, dtype, layout, rng)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("spec", "case", "backend"), list(_expand("backward")))
def test_backward(spec, case, backend, dtype, layout, rng):
    check_backward(spec, case, backend, dtype, layout, rng)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("spec", "case", "backend"), list(_expand("forward")))
def test_nan_propagates_as_in_reference(spec, case, backend, dtype, rng):
    if not all(math.prod(shape) for shape in case.shapes.values()):
        pytest.skip("no element to make NaN")
    check_forward(spec, case, backend, dtype, "contiguous", rng, specials=1)


@pytest.mark.parametrize(("spec", "case", "backend"), list(_expand("forward")))
def test_forward_into_out(spec, case, backend, rng):
    check_forward(spec, case, backend, "float32", "contiguous", rng, into_out=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", [b for b in BACKENDS if has_op("max_pool2d", b)])
@pytest.mark.parametrize(
    "params",
    [
        {"kernel_size": 2},
        {"kernel_size": 3, "stride": 2, "padding": 1},
        {"kernel_size": 2, "stride": 1, "dilation": 2, "ceil_mode": True},
    ],
)
def test_max_pool_ties_and_nans_pick_as_the_reference(backend, dtype, params, rng):
    """Many equal values and several NaNs per window: the same element must win
    (the first maximum, else the last NaN), so indices and gradients match exactly."""
    x = rng.integers(-2, 3, size=(2, 3, 11, 18)).astype(dtype)
    x.flat[rng.choice(x.size, 40, replace=False)] = np.nan
    expected, expected_indices = F.max_pool2d(x, **params, return_indices=True, backend="reference")
    with poison_outputs():
        actual, indices = F.max_pool2d(x, **params, return_indices=True, backend=backend)
        plain = F.max_pool2d(x, **params, backend=backend)
    np.testing.assert_array_equal(actual, expected)
    np.testing.assert_array_equal(plain, expected)
    np.testing.assert_array_equal(indices, expected_indices)
    grad_y = rng.standard_normal(expected.shape).astype(dtype)
    reference_grad = F.max_pool2d_backward(grad_y, x, **params, backend="reference")
    for given in (None, indices):
        with poison_outputs():
            grad_x = F.max_pool2d_backward(grad_y, x, **params, indices=given, backend=backend)
        np.testing.assert_allclose(grad_x, reference_grad, rtol=1e-6, atol=1e-6)


def _parameter_gradient_cases():
    functions = {"conv2d": F.conv2d_backward, "linear": F.linear_backward}
    for spec in SPECS:
        if spec.name not in functions:
            continue
        for backend in BACKENDS:
            if has_op(spec.ops[1], backend):
                for case in spec.cases:
                    yield pytest.param(
                        spec, case, backend, functions[spec.name],
                        id=f"{spec.name}-{case.name}-{backend}".replace(" ", "_"),
                    )  # fmt: skip


@pytest.mark.parametrize(("spec", "case", "backend", "backward"), list(_parameter_gradient_cases()))
def test_parameter_gradients_without_the_input_gradient(spec, case, backend, backward, rng):
    """input_grad=False: no grad_x, and the parameters' gradients are still right."""
    inputs = spec.make_inputs(case, "float32", rng)
    wide = float64_inputs(inputs)
    y = spec.forward(wide, case.params, "reference")
    grad_y = rng.standard_normal(y.shape)
    expected = spec.backward(wide, case.params, grad_y, y, "reference")
    with poison_outputs():
        grad_x, grad_weight, grad_bias = backward(
            grad_y.astype(np.float32), inputs["x"], inputs["weight"], **case.params,
            bias="bias" in inputs, input_grad=False, backend=backend,
        )  # fmt: skip
    assert grad_x is None
    label = f"{spec.name} [{case.name}]"
    assert_close(grad_weight, expected["weight"], spec.tolerance["float32"], f"weight, {label}")
    if "bias" in inputs:
        assert_close(grad_bias, expected["bias"], spec.tolerance["float32"], f"bias, {label}")
