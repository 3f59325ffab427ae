"""conv2d and conv2d_backward on the Numba backend: algorithm choice and dispatch.
Algorithms: direct (direct.py), im2col (im2col.py), winograd (winograd.py), depthwise.

Every algorithm takes every case: one that cannot (Winograd for a 5x5 kernel, the
depthwise kernel for a dense convolution) runs the direct algorithm instead, so
``algo=`` is a preference, never an error. ``"auto"`` asks :func:`choose`: the timed
winner when ``fastcnn.autotune(True)`` is on, else the first candidate whose "can I
take this case?" predicate holds, in the order of :data:`CANDIDATES`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numba
import numpy as np
from numba import prange

from fastcnn._shapes import ConvGeometry
from fastcnn.backends import register
from fastcnn.backends.numba import depthwise, direct, im2col, small_channels, winograd
from fastcnn.backends.numba._setup import jit
from fastcnn.backends.numba.gemm import KC, MR, NR, panels
from fastcnn.backends.numba.phases import PhaseLayout, split_phases
from fastcnn.backends.numba.workspace import scratch

ALGORITHMS = ("direct", "im2col", "winograd", "depthwise", "small_channels")

# ---------------------------------------------------------------------------- predicates


def is_depthwise(g: ConvGeometry) -> bool:
    """One input channel per group (depthwise, with any channel multiplier)."""
    return g.C == g.groups


def is_winograd_shape(g: ConvGeometry) -> bool:
    """3x3, stride 1, dilation 1: the shape F(2x2, 3x3) computes."""
    return (g.R, g.S, g.stride_h, g.stride_w, g.dilation_h, g.dilation_w) == (3, 3, 1, 1, 1, 1)


def is_gemm(g: ConvGeometry) -> bool:
    """1x1, stride 1, no padding: y[n] = W @ x[n], no copy of x at all."""
    return (g.R, g.S, g.stride_h, g.stride_w, g.pad_h, g.pad_w) == (1, 1, 1, 1, 0, 0)


def _winograd_pays(g: ConvGeometry) -> bool:
    # F(4x4, 3x3) with vectorised transforms measured (2 threads, float32, forward)
    # 390-600 GFLOP/s-equivalent on the ResNet-50 and VGG 3x3 layers against 250-300 for
    # direct, 1.4-2x faster down to 3 input channels (VGG conv1, CIFAR) and 7x7 outputs.
    # Dense only (groups mix tiny GEMMs), and at least one whole 4x4 tile per image.
    return is_winograd_shape(g) and g.groups == 1 and min(g.P, g.Q) >= 4


#: "auto" without autotuning: the first candidate that takes the case (Convolution.cpp style).
CANDIDATES: tuple[tuple[str, Callable[[ConvGeometry], bool]], ...] = (
    ("depthwise", lambda g: is_depthwise(g) and g.groups > 1),  # C = 1 is dense: direct
    ("small_channels", small_channels.takes),
    ("winograd", _winograd_pays),
    ("im2col", lambda g: g.R == 1 and g.S == 1),
    ("direct", lambda g: True),
)


def heuristic(g: ConvGeometry) -> str:
    return next(name for name, takes in CANDIDATES if takes(g))


def candidates(g: ConvGeometry) -> list[str]:
    """The algorithms worth timing for ``g`` (those that run as themselves)."""
    names = ["direct", "im2col"]
    if is_winograd_shape(g):
        names.append("winograd")
    if is_depthwise(g):
        names.append("depthwise")
    names.append("small_channels")
    return names


def _resolve(algo: str, g: ConvGeometry, dtype, backward: bool) -> str:
    if algo == "auto":
        # fastcnn.autotune is the switch function; the module is reached by its full name.
        from fastcnn.autotune import choose

        algo = choose(g, dtype, backward, heuristic(g), candidates(g), _RUNNERS)
    if algo == "winograd" and not is_winograd_shape(g):
        return "direct"
    if algo == "depthwise" and not is_depthwise(g):
        return "direct"
    return algo


def _init(bias, K: int, dtype) -> np.ndarray:
    return scratch("conv2d.zero_bias", K, dtype, zeroed=True) if bias is None else bias


@functools.lru_cache(maxsize=256)
def _tap_offsets(g: ConvGeometry) -> np.ndarray:
    """The phase layout's tap offsets, made once per geometry (read-only)."""
    offsets = PhaseLayout(g).tap_offsets(g)
    offsets.flags.writeable = False
    return offsets


@functools.lru_cache(maxsize=256)
def _channel_offsets(C: int, plane: int) -> np.ndarray:
    """c * plane for each channel: where each channel starts in one image (read-only)."""
    offsets = np.arange(C, dtype=np.int64) * plane
    offsets.flags.writeable = False
    return offsets


def _phase_split(x, g: ConvGeometry, layout: PhaseLayout) -> np.ndarray:
    buffer = scratch("conv2d.phases", layout.size, x.dtype)
    split_phases(
        x.reshape(-1), g.N, g.C, g.H, g.W, g.stride_h, g.stride_w, g.pad_h, g.pad_w,
        layout.height, layout.width, buffer,
    )  # fmt: skip
    return buffer


# ---------------------------------------------------------------------------- forward


def direct_forward(x, weight, bias, y, g: ConvGeometry) -> None:
    layout = PhaseLayout(g)
    buffer = _phase_split(x, g, layout)
    G, Kg = g.groups, g.K // g.groups
    T = g.C // G * g.R * g.S
    packed = scratch("conv2d.packed_weights", G * panels(Kg) * T * MR, x.dtype)
    direct.pack_weights(weight.reshape(-1), G, Kg, T, packed)
    parts = numba.get_num_threads()
    staging = scratch("conv2d.staging", parts * Kg * direct.CHUNK, x.dtype)
    direct.forward(
        buffer, layout.image, g.C // G * layout.channel, _tap_offsets(g), packed,
        G, Kg, layout.columns, layout.width, g.P, g.Q, _init(bias, g.K, x.dtype), y.reshape(-1),
        parts, staging, staging[:1],
    )  # fmt: skip


_FORWARD = {
    "direct": direct_forward,
    "im2col": im2col.forward,
    "winograd": winograd.forward,
    "depthwise": depthwise.forward,
    "small_channels": small_channels.forward,
}


@register("conv2d", "numba", algorithms=ALGORITHMS)
def conv2d(x, weight, bias, y, g: ConvGeometry, algo: str = "auto") -> None:
    _FORWARD[_resolve(algo, g, x.dtype, False)](x, weight, bias, y, g)


# ---------------------------------------------------------------------------- backward


def transposed_geometry(g: ConvGeometry) -> ConvGeometry:
    """For stride 1: grad_x is the convolution of grad_y with the flipped, transposed
    weight (see :func:`transposed_weight`) and top/left padding (R-1)*dh - pad_h
    (negative when the padding exceeds the kernel: that crops)."""
    return ConvGeometry(
        g.N, g.K, g.P, g.Q, g.C, g.R, g.S, g.H, g.W, 1, 1,
        (g.R - 1) * g.dilation_h - g.pad_h, (g.S - 1) * g.dilation_w - g.pad_w,
        g.dilation_h, g.dilation_w, g.groups,
    )  # fmt: skip


#: Input channels per task of the weight transpose (rows of its output).
_TRANSPOSE_ROWS = 16


@jit(parallel=True)
def _transpose_weight(weight, G, Kg, Cg, R, S, out):
    # A block of output rows (g, c0 .. c0 + 16) per task, k outer: each step reads one
    # contiguous run of the weight and appends to 16 output rows. (Row by row, the reads
    # stride 18 KB at 512 x 512 x 3 x 3 and fall into two L1 sets: 3.2 ms; this, 0.3.)
    RS = R * S
    blocks = (Cg + _TRANSPOSE_ROWS - 1) // _TRANSPOSE_ROWS
    for task in prange(G * blocks):
        g, c0 = task // blocks, task % blocks * _TRANSPOSE_ROWS
        rows = min(_TRANSPOSE_ROWS, Cg - c0)
        for k in range(Kg):
            source = weight[((g * Kg + k) * Cg + c0) * RS :][: rows * RS]
            for c in range(rows):
                target = out[((g * Cg + c0 + c) * Kg + k) * RS :][:RS]
                for rs in range(RS):
                    target[rs] = source[c * RS + RS - 1 - rs]


def transposed_weight(weight, g: ConvGeometry) -> np.ndarray:
    """weight'[g*Cg + c, k, r, s] = weight[g*Kg + k, c, R-1-r, S-1-s] (a workspace)."""
    G = g.groups
    out = scratch("conv2d.transposed_weight", weight.size, weight.dtype)
    _transpose_weight(weight.reshape(-1), G, g.K // G, g.C // G, g.R, g.S, out)
    return out.reshape(g.C, g.K // G, g.R, g.S)


#: Above this many weight-gradient elements, the threads split the output instead of the
#: reduction: per-thread partial sums would cost more than an uneven split.
SPLIT_OUTPUTS = 1 << 18
#: From this many flat output positions over the batch (garbage columns included) the
#: weight gradient reads the input unpacked (direct.padded_weight_gradient): its sums
#: then run long enough between lane sums. Measured (2 threads, float32) 1.2x faster at
#: 14x14 x 8 images (1792 positions) and 2x at LeNet's 8x8 x 256; the packed GEMM
#: (direct.weight_gradient) 1.2-1.4x faster at 7x7 x 8 (504) and 14x14 x 1 (224).
UNPACKED_POSITIONS = 1024


def direct_weight_gradient(grad_y, x, grad_weight, g: ConvGeometry) -> None:
    layout = PhaseLayout(g)
    parts = numba.get_num_threads()
    target = grad_weight.reshape(-1)
    unpacked = g.groups == 1 and g.N * layout.columns >= UNPACKED_POSITIONS
    PQ = g.P * g.Q
    if unpacked and PQ % direct.LANES == 0 and (is_gemm(g) or im2col.is_strided_pointwise(g)):
        # x (or, strided, the inputs the forward read, gathered) and grad_y read as they
        # are: their planes end on a lane, so no garbage columns.
        source = x.reshape(-1)
        if not is_gemm(g):
            source = scratch("conv2d.subsampled", g.N * g.C * PQ, x.dtype)
            im2col.subsample(
                x.reshape(-1), g.N, g.C, g.H, g.W, g.P, g.Q, g.stride_h, g.stride_w, source
            )
        direct.padded_weight_gradient(
            source, g.C * PQ, _channel_offsets(g.C, PQ), grad_y.reshape(-1), PQ, g.K * PQ, PQ,
            g.N, g.K, parts, target,
        )  # fmt: skip
        return
    buffer = _phase_split(x, g, layout)
    if unpacked:
        # grad_y copied into the phase buffer's row pitch (zero garbage columns), then a
        # GEMM that reads the shifted input rows in place: no transposing pack of x.
        rows = panels(g.K) * MR
        length = -(-layout.columns // direct.LANES) * direct.LANES
        padded = scratch("conv2d.padded_gradient", g.N * rows * length, x.dtype)
        direct.pad_gradient_rows(
            grad_y.reshape(-1), g.N, g.K, g.P, g.Q, layout.width, rows, length, padded
        )
        direct.padded_weight_gradient(
            buffer, layout.image, _tap_offsets(g), padded, g.N * length, length, length,
            g.N, g.K, parts, target,
        )  # fmt: skip
        if not np.isnan(target).any():  # else an inf or NaN in a garbage column: recompute
            return
    G, Kg, T = g.groups, g.K // g.groups, g.C // g.groups * g.R * g.S
    split_outputs = g.K * T >= SPLIT_OUTPUTS or parts == 1
    dtype = x.dtype
    partial = scratch("conv2d.partial", 1 if split_outputs else parts * g.K * T, dtype)
    direct.weight_gradient(
        buffer, layout.image, g.C // G * layout.channel, _tap_offsets(g), grad_y.reshape(-1),
        g.N, G, Kg, g.P, g.Q, layout.width, parts, split_outputs,
        scratch("conv2d.gradient_rows", parts * panels(Kg) * KC * MR, dtype),
        scratch("conv2d.gradient_taps", parts * KC * NR, dtype),
        scratch("conv2d.zero_rows", Kg, dtype, zeroed=True), partial, target,
    )  # fmt: skip
    if not split_outputs:
        direct.sum_parts(partial, parts, target)


@jit
def _sum_channels(grad_y, N, K, PQ, grad_bias):
    """grad_bias[k] = sum over n, p, q of grad_y[n, k, p, q], in the output's dtype."""
    for k in range(K):
        total = 0.0  # float64 across images; each image's plane sums in the input's dtype
        for n in range(N):
            total += np.sum(grad_y[(n * K + k) * PQ : (n * K + k + 1) * PQ])
        grad_bias[k] = total


def _input_gradient(grad_y, weight, grad_x, g: ConvGeometry, algo: str) -> None:
    if g.stride_h == 1 and g.stride_w == 1 and algo != "im2col":
        t = transposed_geometry(g)
        _FORWARD[algo](grad_y, transposed_weight(weight, g), None, grad_x, t)
    else:
        im2col.input_gradient(grad_y, weight, grad_x, g)


@register("conv2d_backward", "numba", algorithms=ALGORITHMS)
def conv2d_backward(
    grad_y, x, weight, grad_x, grad_weight, grad_bias, g: ConvGeometry, algo: str = "auto"
) -> None:
    algo = _resolve(algo, g, x.dtype, True)
    if algo == "depthwise":
        depthwise.backward(grad_y, x, weight, grad_x, grad_weight, g)
    elif algo == "small_channels":
        if grad_x is not None:
            small_channels.input_gradient(grad_y, weight, grad_x, g)
        if small_channels.owns_weight_gradient(g):
            small_channels.weight_gradient(grad_y, x, grad_weight, g)
        else:
            direct_weight_gradient(grad_y, x, grad_weight, g)
    else:
        if grad_x is not None:
            _input_gradient(grad_y, weight, grad_x, g, algo)
        direct_weight_gradient(grad_y, x, grad_weight, g)
    if grad_bias is not None:
        _sum_channels(grad_y.reshape(-1), g.N, g.K, g.P * g.Q, grad_bias)


_RUNNERS = {"forward": conv2d, "backward": conv2d_backward}
