"""algo= says what runs: an algorithm that cannot take a case is an error naming those
that can; explain_conv2d says what "auto" picks and why; each direction runs exactly the
algorithm resolved for it (the path census shows it)."""

from __future__ import annotations

import numpy as np
import pytest

import fastcnn
import fastcnn.functional as F
from fastcnn import _census

pytest.importorskip("numba")


def _arrays(rng, x_shape, w_shape):
    return (
        rng.standard_normal(x_shape).astype(np.float32),
        rng.standard_normal(w_shape).astype(np.float32),
    )


def test_an_algorithm_that_cannot_take_the_case_raises_listing_those_that_can(rng):
    x, w = _arrays(rng, (1, 4, 9, 9), (4, 4, 5, 5))
    with pytest.raises(ValueError, match=r"algo='winograd' cannot take the forward.*'direct'"):
        F.conv2d(x, w, algo="winograd", backend="numba")
    with pytest.raises(ValueError, match=r"algo='depthwise'.*\['direct', 'im2col'"):
        F.conv2d(x, w, algo="depthwise", backend="numba")
    gy = np.ones((1, 4, 5, 5), np.float32)
    with pytest.raises(ValueError, match="cannot take the input gradient"):
        F.conv2d_backward(gy, x, w, stride=1, algo="winograd", backend="numba")


def test_a_strided_input_gradient_names_im2col(rng):
    x, w = _arrays(rng, (1, 4, 9, 9), (4, 4, 3, 3))
    gy = np.ones((1, 4, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"input gradient.*\['im2col'\]"):
        F.conv2d_backward(gy, x, w, stride=2, algo="direct", backend="numba")
    # without grad_x the weight gradient alone is asked for, which direct takes
    F.conv2d_backward(gy, x, w, stride=2, algo="direct", input_grad=False, backend="numba")


def test_a_pair_names_each_gradient_and_runs_exactly_those(rng):
    x, w = _arrays(rng, (2, 8, 24, 44), (8, 8, 3, 3))
    gy = rng.standard_normal((2, 8, 24, 44)).astype(np.float32)
    expected = F.conv2d_backward(gy, x, w, padding=1, backend="reference")
    with _census.counting() as seen:
        actual = F.conv2d_backward(
            gy, x, w, padding=1, algo=("winograd", "im2col"), backend="numba"
        )
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_allclose(a, e, atol=1e-4 * np.abs(e).max())
    families = {path.split(".")[0] for (_, path) in seen}
    assert families == {"winograd", "direct"}, seen  # im2col's weight gradient: the packed GEMM
    assert ("numba", "direct.weight_gradient.packed") in seen or (
        "numba",
        "direct.weight_gradient.packed_split_outputs",
    ) in seen


def test_bad_algo_types_and_names(rng):
    x, w = _arrays(rng, (1, 2, 5, 5), (2, 2, 3, 3))
    with pytest.raises(TypeError, match="algo must be a str"):
        F.conv2d(x, w, algo=("direct", "im2col"), backend="numba")
    with pytest.raises(ValueError, match="algo must be 'auto' or one of"):
        F.conv2d(x, w, algo="fft", backend="numba")
    with pytest.raises(ValueError, match="offers no algorithms"):
        F.conv2d(x, w, algo="direct", backend="reference")


@pytest.mark.parametrize(
    ("x", "w", "params", "expected"),
    [
        ((8, 64, 56, 56), (64, 64, 3, 3), {"padding": 1}, ("winograd", "winograd", "direct")),
        (
            (8, 3, 224, 224),
            (64, 3, 7, 7),
            {"stride": 2, "padding": 3},
            ("small_channels", "im2col", "direct"),
        ),
        ((8, 32, 112, 112), (32, 1, 3, 3), {"padding": 1, "groups": 32}, ("depthwise",) * 3),
        ((8, 256, 14, 14), (1024, 256, 1, 1), {}, ("im2col", "im2col", "direct")),
    ],
)
def test_explain_names_what_auto_runs(x, w, params, expected, rng):
    report = fastcnn.explain_conv2d(x, w, **params, backend="numba")
    assert report["backend"] == "numba"
    directions = ("forward", "input_gradient", "weight_gradient")
    assert tuple(report[d]["algorithm"] for d in directions) == expected
    for direction in directions:
        assert report[direction]["algorithm"] in report[direction]["takes"]
        assert report[direction]["why"]


def test_explain_agrees_with_the_census(rng):
    x, w = _arrays(rng, (1, 8, 24, 44), (8, 8, 3, 3))
    report = fastcnn.explain_conv2d(x, w, padding=1)
    with _census.counting() as seen:
        F.conv2d(x, w, padding=1)
    ((_, path),) = seen
    assert path.startswith(report["forward"]["algorithm"] + ".")


def test_cross_entropy_backward_takes_a_one_element_gradient(rng):
    logits = rng.standard_normal((4, 3))
    labels = np.array([0, 1, 2, 0])
    expected = F.cross_entropy_backward(logits, labels, grad_output=0.7)
    for given in (np.array([0.7]), np.array(0.7), np.float64(0.7)):
        np.testing.assert_allclose(
            F.cross_entropy_backward(logits, labels, grad_output=given), expected
        )
    with pytest.raises(ValueError, match="grad_output"):
        F.cross_entropy_backward(logits, labels, grad_output=np.array([0.7, 0.3]))
