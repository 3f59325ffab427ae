"""conv2d and conv2d_backward on the Numba backend: which algorithm runs, and dispatch.
Algorithms: direct, im2col, winograd, depthwise, small_channels (one module each).

Every algorithm module has one interface (``g`` a ``ConvGeometry``)::

    takes(g, direction) -> bool        # can it compute this direction of g itself?
    forward(x, weight, bias, y, g)
    input_gradient(grad_y, weight, grad_x, g)
    weight_gradient(grad_y, x, grad_weight, g)

with ``direction`` one of :data:`DIRECTIONS`. An algorithm that does not take a
direction refuses it (``algo=`` naming it is a ``ValueError`` raised by the functional
API before any kernel runs); none silently runs another. ``"auto"`` picks per direction
from one ordered candidate list each (:data:`CANDIDATES`, as oneDNN's
``cpu_convolution_list.cpp``): the first whose "does it pay?" predicate holds, or, with
``fastcnn.autotune(True)``, the fastest of the algorithms that take the case.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from fastcnn._shapes import ConvGeometry
from fastcnn.autotune import choose
from fastcnn.backends import register
from fastcnn.backends.numba import depthwise, direct, im2col, small_channels, transposed, winograd
from fastcnn.backends.numba._aside import aside
from fastcnn.backends.numba._setup import jit

DIRECTIONS = ("forward", "input_gradient", "weight_gradient")

#: The algorithms by their ``algo=`` names.
ALGORITHMS = {
    "direct": direct,
    "im2col": im2col,
    "winograd": winograd,
    "depthwise": depthwise,
    "small_channels": small_channels,
}


def _is_1x1(g: ConvGeometry) -> bool:
    return g.R == 1 and g.S == 1


def _always(g: ConvGeometry) -> bool:
    return True


#: Per direction, the candidates of "auto" in order: (name, "does it pay?" predicate,
#: why it is picked). The first whose predicate holds wins; the last always does, and
#: every algorithm listed takes the cases its predicate admits.
Candidate = tuple[str, Callable[[ConvGeometry], bool], str]
_DEPTHWISE: Candidate = ("depthwise", depthwise.pays, "depthwise: C == groups > 1")
_DIRECT: Candidate = ("direct", _always, "the general case: no faster algorithm takes it")
CANDIDATES: dict[str, tuple[Candidate, ...]] = {
    "forward": (
        _DEPTHWISE,
        ("small_channels", small_channels.pays, "<= 8 channels per group, <= 256 taps"),
        ("winograd", winograd.pays, "dense 3x3 stride 1 with a whole 4x4 tile"),
        ("im2col", _is_1x1, "1x1: one GEMM"),
        _DIRECT,
    ),
    "input_gradient": (
        (
            "depthwise",
            lambda g: depthwise.pays(g) and depthwise.takes(g, "input_gradient"),
            "depthwise: C == groups > 1, stride 1 or the 3x3 ring",
        ),
        (
            "small_channels",
            lambda g: small_channels.pays(g) and transposed.applies(g),
            "stride 1, <= 8 channels per group, <= 256 taps",
        ),
        ("winograd", winograd.pays, "dense 3x3 stride 1 with a whole 4x4 tile"),
        (
            "im2col",
            lambda g: _is_1x1(g) or not transposed.applies(g),
            "1x1 (one GEMM) or strided (col2im)",
        ),
        _DIRECT,
    ),
    "weight_gradient": (
        _DEPTHWISE,
        (
            "small_channels",
            lambda g: small_channels.pays(g) and small_channels.pays_weight_gradient(g),
            "few channels and taps, and < 16 output channels or < 64 taps per group",
        ),
        _DIRECT,
    ),
}


class AlgorithmTable:
    """What the registry and the functional API ask of this backend's conv2d algorithms."""

    names = tuple(ALGORITHMS)
    directions = DIRECTIONS

    @staticmethod
    def takes(name: str, g: ConvGeometry, direction: str) -> bool:
        return ALGORITHMS[name].takes(g, direction)

    @staticmethod
    def heuristic(g: ConvGeometry, direction: str) -> tuple[str, str]:
        """The first candidate that pays, and why."""
        return next((name, why) for name, pays, why in CANDIDATES[direction] if pays(g))

    @classmethod
    def choose(cls, g: ConvGeometry, direction: str, dtype) -> str:
        """``"auto"``: the heuristic's pick, or the timed winner with autotuning on."""
        default = cls.heuristic(g, direction)[0]
        names = [name for name in cls.names if cls.takes(name, g, direction)]
        return choose(g, dtype, direction, default, names, _RUNNERS)


TABLE = AlgorithmTable()


@jit
def _sum_channels(grad_y, N, K, PQ, grad_bias):
    """grad_bias[k] = sum over n, p, q of grad_y[n, k, p, q], in the output's dtype."""
    for k in range(K):
        total = 0.0  # float64 across images; each image's plane sums in the input's dtype
        for n in range(N):
            total += np.sum(grad_y[(n * K + k) * PQ : (n * K + k + 1) * PQ])
        grad_bias[k] = total


@register("conv2d", "numba", algorithms=TABLE)
def conv2d(x, weight, bias, y, g: ConvGeometry, *, algo: str) -> None:
    ALGORITHMS[algo].forward(x, weight, bias, y, g)


@register("conv2d_backward", "numba", algorithms=TABLE)
def conv2d_backward(
    grad_y, x, weight, grad_x, grad_weight, grad_bias, g: ConvGeometry, *, algo: tuple
) -> None:
    """``algo``: (input-gradient algorithm or None when grad_x is not wanted, weight-
    gradient algorithm)."""
    input_algo, weight_algo = algo
    if grad_x is not None:
        # On a cold cache the weight gradient compiles in a worker meanwhile.
        job = (weight_algo, grad_y.dtype.str, dataclasses.replace(g, N=1))
        with aside(f"{__name__}:compile_weight_gradient", job):
            ALGORITHMS[input_algo].input_gradient(grad_y, weight, grad_x, g)
    ALGORITHMS[weight_algo].weight_gradient(grad_y, x, grad_weight, g)
    if grad_bias is not None:
        _sum_channels(grad_y.reshape(-1), g.N, g.K, g.P * g.Q, grad_bias)


def compile_weight_gradient(algo: str, dtype: str, g: ConvGeometry) -> None:
    """Run ``algo``'s weight gradient once on zeros of ``g``'s shapes, so its kernels
    compile (and are cached) for ``dtype`` and the paths ``g`` takes."""
    grad_y = np.zeros(g.output_shape, dtype)
    x = np.zeros((g.N, g.C, g.H, g.W), dtype)
    grad_weight = np.empty((g.K, g.C // g.groups, g.R, g.S), dtype)
    ALGORITHMS[algo].weight_gradient(grad_y, x, grad_weight, g)


#: What autotuning times: one direction of one algorithm, on arrays it made.
_RUNNERS = {
    "forward": lambda name, x, weight, y, g: ALGORITHMS[name].forward(x, weight, None, y, g),
    "input_gradient": lambda name, grad_y, weight, grad_x, g: ALGORITHMS[name].input_gradient(
        grad_y, weight, grad_x, g
    ),
    "weight_gradient": lambda name, grad_y, x, grad_weight, g: ALGORITHMS[name].weight_gradient(
        grad_y, x, grad_weight, g
    ),
}
