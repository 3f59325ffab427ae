"""The checks every backend passes, shared by the spec suite and the fuzzer: one call of
an op against the float64 reference, with poisoned outputs, inputs checked unchanged,
any memory layout, NaN and inf, and every algorithm that takes the case."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fastcnn._arrays import poison_outputs
from fastcnn.backends import algorithm_table, record
from fastcnn.testing.compare import assert_close, float64_inputs, relayout
from fastcnn.testing.specs import Case, OpSpec, conv_geometry

#: Non-finite values the fuzzer plants in an op's first input.
SPECIALS = (np.nan, np.inf, -np.inf)


def to_device(array, backend: str):
    """``array`` where ``backend`` takes its arrays (NumPy for CPU backends, CuPy on a GPU)."""
    if not isinstance(array, np.ndarray) or record(backend).device == "cpu":
        return array
    import cupy

    return cupy.asarray(array)


def to_host(array):
    """A NumPy array of ``array``'s values, wherever it lives."""
    return array.get() if hasattr(array, "get") else np.asarray(array)


def algorithm_cases(spec: OpSpec, case: Case, backend: str, direction: str) -> list[Case]:
    """``case`` once per algorithm of ``backend`` that takes it (and ``"auto"``), or as it
    is when the op has no algorithms. Backward: each gradient's algorithms in turn, paired
    up (an algorithm without a weight gradient, such as Winograd, runs beside another)."""
    op = spec.ops[0] if direction == "forward" else spec.ops[1]
    table = algorithm_table(op, backend)
    if table is None:
        return [case]
    g = conv_geometry(case)

    def able(way: str) -> list[str]:
        return [name for name in table.names if table.takes(name, g, way)]

    if direction == "forward":
        choices: list = ["auto", *able("forward")]
    else:
        inputs, weights = able("input_gradient"), able("weight_gradient")
        count = max(len(inputs), len(weights))
        choices = ["auto"] + [
            (inputs[i % len(inputs)], weights[i % len(weights)]) for i in range(count)
        ]
    return [replace(case, params={**case.params, "algo": algo}) for algo in choices]


def truth(params: dict) -> dict:
    """The parameters for the reference: every backend's algorithm has the same truth."""
    return {k: v for k, v in params.items() if k != "algo"}


def plant_specials(inputs: dict, name: str, rng: np.random.Generator, count: int) -> None:
    """Set ``count`` random elements of ``inputs[name]`` to NaN, inf or -inf."""
    array = inputs[name]
    if array.size and count:
        where = rng.choice(array.size, min(count, array.size), replace=False)
        array.flat[where] = rng.choice(SPECIALS, where.size)


def _copies(inputs: dict) -> dict:
    return {k: v.copy() for k, v in inputs.items()}


def _assert_unchanged(inputs: dict, originals: dict) -> None:
    for name, original in originals.items():
        np.testing.assert_array_equal(
            to_host(inputs[name]), original, err_msg=f"{name} was modified"
        )


def _on(backend: str, inputs: dict, layout: str) -> dict:
    return {k: relayout(to_device(v, backend), layout) for k, v in inputs.items()}


def check_forward(
    spec, case, backend, dtype, layout, rng, specials: int = 0, into_out: bool = False
) -> None:
    """The forward output of ``backend`` matches the reference's (NaN where NaN);
    ``into_out``: written into a NaN-filled ``out=`` array, which is returned."""
    inputs = spec.make_inputs(case, dtype, rng)
    plant_specials(inputs, spec.inputs[0], rng, specials)
    expected = spec.forward(float64_inputs(inputs), truth(case.params), "reference")
    on_device = _on(backend, inputs, layout)
    originals = _copies(inputs)
    params = case.params
    if into_out:
        out = to_device(np.full(expected.shape, np.nan, dtype), backend)
        params = {**params, "out": out}
    with poison_outputs():
        actual = spec.forward(on_device, params, backend)
    if into_out:
        assert actual is out
    _assert_unchanged(on_device, originals)
    assert actual.dtype == np.dtype(dtype)
    assert_close(to_host(actual), expected, spec.tolerance[dtype], f"{spec.name} {case}")


def check_backward(spec, case, backend, dtype, layout, rng, specials: int = 0) -> None:
    """Every gradient of ``backend`` matches the reference's (NaN where NaN)."""
    inputs = spec.make_inputs(case, dtype, rng)
    plant_specials(inputs, spec.inputs[0], rng, specials)
    wide = float64_inputs(inputs)
    y = spec.forward(wide, truth(case.params), "reference")
    grad_y = rng.standard_normal(y.shape)
    expected = spec.backward(wide, truth(case.params), grad_y, y, "reference")
    arrays = {**inputs, "grad_y": grad_y.astype(dtype), "y": y.astype(dtype)}
    on_device = _on(backend, arrays, layout)
    originals = _copies(arrays)
    inputs_on = {k: on_device[k] for k in inputs}
    with poison_outputs():
        actual = spec.backward(inputs_on, case.params, on_device["grad_y"], on_device["y"], backend)
    _assert_unchanged(on_device, originals)
    assert actual.keys() == expected.keys()
    for name, gradient in actual.items():
        assert gradient.dtype == np.dtype(dtype), name
        assert_close(
            to_host(gradient), expected[name], spec.tolerance[dtype],
            f"grad of {name}, {spec.name} {case}",
        )  # fmt: skip
