"""Helpers for comparing a backend against the float64 reference."""

from __future__ import annotations

import numpy as np

LAYOUTS = ("contiguous", "strided", "reversed", "offset")


def relayout(array, layout: str):
    """The same values in another memory layout: every other element of a larger
    buffer ("strided"), with negative strides on every axis ("reversed"), or contiguous
    but one element into a larger buffer ("offset": misaligned for 16-byte loads)."""
    if layout == "contiguous" or not isinstance(array, np.ndarray) or array.ndim == 0:
        return array
    if layout == "strided":
        fill = np.nan if array.dtype.kind == "f" else -1
        wide = np.full((*array.shape[:-1], 2 * array.shape[-1]), fill, array.dtype)
        wide[..., ::2] = array
        return wide[..., ::2]
    if layout == "reversed":
        return np.flip(np.flip(array).copy())
    if layout == "offset":
        buffer = np.empty(array.size + 1, array.dtype)
        shifted = buffer[1:].reshape(array.shape)
        shifted[...] = array
        return shifted
    raise ValueError(f"unknown layout {layout!r}")


def float64_inputs(inputs: dict) -> dict:
    """The same inputs with every floating array widened to float64 (exactly)."""
    return {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in inputs.items()}


def assert_close(actual, expected, tolerance: float, what: str = "") -> None:
    """|actual - expected| <= tolerance x the expected output's scale, NaN where NaN."""
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    finite = np.abs(expected[np.isfinite(expected)])
    scale = max(float(finite.max(initial=0.0)), 1.0)
    np.testing.assert_allclose(
        actual.astype(np.float64),
        expected,
        rtol=0,
        atol=tolerance * scale,
        equal_nan=True,
        err_msg=what,
    )
