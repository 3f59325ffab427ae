"""Every op of the spec table on every available backend against the float64 reference:
forward and every gradient, float32 and float64, fresh random inputs, poisoned outputs,
contiguous, strided and negative-stride inputs, NaN propagation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import fastcnn.functional as F
from fastcnn.backends import algorithms, available_backends, has_op
from fastcnn.testing import assert_close, float64_inputs, poison_outputs, relayout
from fastcnn.testing.compare import LAYOUTS
from fastcnn.testing.specs import SPECS

DTYPES = ("float32", "float64")
# The reference is the truth itself; it is checked against PyTorch and finite
# differences in test_reference.py.
BACKENDS = [name for name in available_backends() if name not in ("reference", "cuda")]


def _expand(direction: str):
    for spec in SPECS:
        op = spec.ops[0] if direction == "forward" else spec.ops[1]
        if op is None:
            continue
        for backend in BACKENDS:
            if not has_op(op, backend):
                continue
            # A backend offering several algorithms (conv2d) is tested on each of them.
            for algo in ("auto", *algorithms(op, backend)) if algorithms(op, backend) else [None]:
                label = backend if algo is None else f"{backend}:{algo}"
                for case in spec.cases:
                    params = case.params if algo is None else {**case.params, "algo": algo}
                    yield pytest.param(
                        spec,
                        replace(case, params=params),
                        backend,
                        id=f"{spec.name}-{case.name}-{label}".replace(" ", "_"),
                    )


def _truth(params: dict) -> dict:
    """The parameters for the reference: every backend's algorithm has the same truth."""
    return {k: v for k, v in params.items() if k != "algo"}


def _copies(inputs: dict) -> dict:
    return {k: v.copy() for k, v in inputs.items()}


def _assert_unchanged(inputs: dict, originals: dict) -> None:
    for name, original in originals.items():
        np.testing.assert_array_equal(inputs[name], original, err_msg=f"{name} was modified")


def _relayout_all(inputs: dict, layout: str) -> dict:
    return {k: relayout(v, layout) for k, v in inputs.items()}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("spec", "case", "backend"), list(_expand("forward")))
def test_forward(spec, case, backend, dtype, layout):
    rng = np.random.default_rng()
    inputs = _relayout_all(spec.make_inputs(case, dtype, rng), layout)
    originals = _copies(inputs)
    expected = spec.forward(float64_inputs(inputs), _truth(case.params), "reference")
    with poison_outputs():
        actual = spec.forward(inputs, case.params, backend)
    _assert_unchanged(inputs, originals)
    assert actual.dtype == np.dtype(dtype)
    assert_close(actual, expected, spec.tolerance[dtype], f"{spec.name} [{case.name}]")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("spec", "case", "backend"), list(_expand("backward")))
def test_backward(spec, case, backend, dtype, layout):
    rng = np.random.default_rng()
    inputs = spec.make_inputs(case, dtype, rng)
    wide = float64_inputs(inputs)
    y = spec.forward(wide, _truth(case.params), "reference")
    grad_y = rng.standard_normal(y.shape)
    expected = spec.backward(wide, _truth(case.params), grad_y, y, "reference")

    inputs = _relayout_all(inputs, layout)
    grad_y = relayout(grad_y.astype(dtype), layout)
    y = relayout(y.astype(dtype), layout)
    originals = _copies({**inputs, "grad_y": grad_y, "y": y})
    with poison_outputs():
        actual = spec.backward(inputs, case.params, grad_y, y, backend)
    _assert_unchanged({**inputs, "grad_y": grad_y, "y": y}, originals)
    assert actual.keys() == expected.keys()
    for name, gradient in actual.items():
        assert gradient.dtype == np.dtype(dtype), name
        assert_close(
            gradient,
            expected[name],
            spec.tolerance[dtype],
            f"grad of {name}, {spec.name} [{case.name}]",
        )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("spec", "case", "backend"), list(_expand("forward")))
def test_nan_propagates_as_in_reference(spec, case, backend, dtype):
    rng = np.random.default_rng()
    inputs = spec.make_inputs(case, dtype, rng)
    first = inputs[spec.inputs[0]]
    if first.size == 0:
        pytest.skip("no element to make NaN")
    first.flat[rng.integers(first.size)] = np.nan
    expected = spec.forward(float64_inputs(inputs), _truth(case.params), "reference")
    with poison_outputs():
        actual = spec.forward(inputs, case.params, backend)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    assert_close(actual, expected, spec.tolerance[dtype], f"{spec.name} [{case.name}] with NaN")


@pytest.mark.parametrize(("spec", "case", "backend"), list(_expand("forward")))
def test_forward_into_out(spec, case, backend):
    inputs = spec.make_inputs(case, np.float32, np.random.default_rng())
    expected = spec.forward(float64_inputs(inputs), _truth(case.params), "reference")
    out = np.full(expected.shape, np.nan, np.float32)
    actual = spec.forward(inputs, {**case.params, "out": out}, backend)
    assert actual is out
    assert_close(out, expected, spec.tolerance["float32"], f"{spec.name} [{case.name}] out=")


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
def test_max_pool_ties_and_nans_pick_as_the_reference(backend, dtype, params):
    """Many equal values and several NaNs per window: the same element must win
    (the first maximum, else the last NaN), so indices and gradients match exactly."""
    rng = np.random.default_rng()
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
def test_parameter_gradients_without_the_input_gradient(spec, case, backend, backward):
    """input_grad=False: no grad_x, and the parameters' gradients are still right."""
    rng = np.random.default_rng()
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
