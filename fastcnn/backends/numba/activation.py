"""ReLU, leaky ReLU, sigmoid and tanh, forward and backward, on flat float32 / float64 arrays.
Algorithm: one branch-free pass, split into large contiguous chunks over the threads; float32
exp / tanh are inlined polynomials (LLVM vectorises them; Numba has no vector libm here).

Traffic per element: forward reads x and writes y (2 x itemsize bytes), backward reads
grad_y and x (or y) and writes grad_x (3 x itemsize). Every op is memory-bound, so the
work is to keep the loop vectorised and to touch each byte once.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic, overload

from fastcnn import _census
from fastcnn.backends import register
from fastcnn.backends.numba._setup import jit

#: Elements per parallel task: 64 Ki float32 = 256 KiB of x, a few L2-sized pieces per
#: thread on large arrays; arrays of one chunk run serially (no thread-pool start).
CHUNK = 1 << 16


# ---------------------------------------------------------------------------- float32 math
# Cephes-style expf: x = n ln2 + r with |r| <= ln2 / 2, exp(r) by a degree-6 polynomial,
# 2^n built in the exponent bits. Only the x <= 0 half is needed (sigmoid, tanh and
# softmax take exp of a non-positive number), so 2^n never overflows.

_LOG2E = np.float32(1.4426950408889634)
_LN2_HIGH = np.float32(0.693359375)  # few mantissa bits: n * _LN2_HIGH is exact
_LN2_LOW = np.float32(-2.12194440e-4)
_EXP_LOWEST = np.float32(-87.3)  # exp(-87.3) ~ 1.2e-38 is still a normal float32
_HALF = np.float32(0.5)
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_EXP_COEFFICIENTS = (
    np.float32(1.9875691500e-4),
    np.float32(1.3981999507e-3),
    np.float32(8.3334519073e-3),
    np.float32(4.1665795894e-2),
    np.float32(1.6666665459e-1),
    np.float32(5.0000001201e-1),
)
_C0, _C1, _C2, _C3, _C4, _C5 = _EXP_COEFFICIENTS
# tanh(x) = x (1 + x^2 (-1/3 + x^2 (2/15 - 17/315 x^2))) for |x| < 1/16 (error < 1e-10
# relative): 1 - exp(-2|x|) loses the leading digits there.
_TANH_SMALL = np.float32(0.0625)
_T1 = np.float32(-1.0 / 3.0)
_T2 = np.float32(2.0 / 15.0)
_T3 = np.float32(-17.0 / 315.0)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret an int32 as the float32 with the same bits (one register move)."""
    signature = types.float32(types.int32)

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return signature, codegen


@jit(inline="always")
def _exp_nonpositive_float32(x):
    clamped = _EXP_LOWEST if x < _EXP_LOWEST else x  # keeps NaN (the comparison is false)
    n = np.floor(clamped * _LOG2E + _HALF)  # in [-126, 0]; np.floor keeps float32
    r = clamped - n * _LN2_HIGH - n * _LN2_LOW
    p = _C0 * r + _C1
    p = p * r + _C2
    p = p * r + _C3
    p = p * r + _C4
    p = p * r + _C5
    p = p * r * r + r + _ONE
    scale = _float32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))
    result = p * scale if x >= _EXP_LOWEST else _ZERO  # below: under 1.2e-38, and -inf gives 0
    return result if x == x else x  # NaN: n above was not a number either


def exp_nonpositive(x):
    """exp(x) for x <= 0 (or NaN), vectorisable in float32; math.exp in float64."""
    raise NotImplementedError("only callable from jitted code")


@overload(exp_nonpositive, inline="always")
def _exp_nonpositive_overload(x):
    if x == types.float32:
        return lambda x: _exp_nonpositive_float32(x)
    return lambda x: math.exp(x)


@jit(inline="always")
def _tanh_float32(x):
    magnitude = abs(x)
    e = _exp_nonpositive_float32(-(magnitude + magnitude))
    large = (_ONE - e) / (_ONE + e)
    square = x * x
    small = magnitude * (_ONE + square * (_T1 + square * (_T2 + square * _T3)))
    value = small if magnitude < _TANH_SMALL else large
    return math.copysign(value, x)  # also keeps NaN, and the sign of -0.0


def _tanh(x):
    raise NotImplementedError("only callable from jitted code")


@overload(_tanh, inline="always")
def _tanh_overload(x):
    if x == types.float32:
        return lambda x: _tanh_float32(x)
    return lambda x: math.tanh(x)


# ---------------------------------------------------------------------------- loop bodies
# Each body handles elements [start, stop); the parallel driver hands out chunks. The
# bodies loop over slices from index 0: an index Numba cannot prove non-negative gets a
# wrap-around select, which turns every load into a masked gather.


@jit
def _relu_span(x, y, start, stop):
    zero = y.dtype.type(0)
    x, y = x[start:stop], y[start:stop]
    for i in range(y.size):
        value = x[i]
        y[i] = zero if value < zero else value  # NaN < 0 is false: NaN stays


@jit
def _relu_backward_span(grad_y, x, grad_x, start, stop):
    zero = grad_x.dtype.type(0)
    grad_y, x, grad_x = grad_y[start:stop], x[start:stop], grad_x[start:stop]
    for i in range(grad_x.size):
        grad_x[i] = grad_y[i] if x[i] > zero else zero


@jit
def _leaky_relu_span(x, y, negative_slope, start, stop):
    zero = y.dtype.type(0)
    slope = y.dtype.type(negative_slope)
    x, y = x[start:stop], y[start:stop]
    for i in range(y.size):
        value = x[i]
        y[i] = value if value > zero else value * slope


@jit
def _leaky_relu_backward_span(grad_y, x, grad_x, negative_slope, start, stop):
    zero = grad_x.dtype.type(0)
    slope = grad_x.dtype.type(negative_slope)
    grad_y, x, grad_x = grad_y[start:stop], x[start:stop], grad_x[start:stop]
    for i in range(grad_x.size):
        gradient = grad_y[i]
        grad_x[i] = gradient if x[i] > zero else gradient * slope


@jit
def _sigmoid_span(x, y, start, stop):
    zero = y.dtype.type(0)
    one = y.dtype.type(1)
    x, y = x[start:stop], y[start:stop]
    for i in range(y.size):
        value = x[i]
        # exp of -|x| never overflows: 1/(1+e) for x >= 0, e/(1+e) below; one division.
        e = exp_nonpositive(-abs(value))
        reciprocal = one / (one + e)
        result = reciprocal if value >= zero else e * reciprocal
        y[i] = value if value != value else result


@jit
def _sigmoid_backward_span(grad_y, y, grad_x, start, stop):
    one = grad_x.dtype.type(1)
    grad_y, y, grad_x = grad_y[start:stop], y[start:stop], grad_x[start:stop]
    for i in range(grad_x.size):
        value = y[i]
        grad_x[i] = grad_y[i] * value * (one - value)


@jit
def _tanh_span(x, y, start, stop):
    x, y = x[start:stop], y[start:stop]
    for i in range(y.size):
        y[i] = _tanh(x[i])


@jit
def _tanh_backward_span(grad_y, y, grad_x, start, stop):
    one = grad_x.dtype.type(1)
    grad_y, y, grad_x = grad_y[start:stop], y[start:stop], grad_x[start:stop]
    for i in range(grad_x.size):
        value = y[i]
        grad_x[i] = grad_y[i] * (one - value * value)


# ---------------------------------------------------------------------------- parallel drivers
# One driver per op: Numba does not cache a function that takes another jitted function as
# an argument, so the chunk loop is spelled out for each body.


@jit(parallel=True)
def _relu_parallel(x, y):
    n = y.size
    for chunk in prange((n + CHUNK - 1) // CHUNK):
        _relu_span(x, y, chunk * CHUNK, min(chunk * CHUNK + CHUNK, n))


@jit(parallel=True)
def _relu_backward_parallel(grad_y, x, grad_x):
    n = grad_x.size
    for chunk in prange((n + CHUNK - 1) // CHUNK):
        _relu_backward_span(grad_y, x, grad_x, chunk * CHUNK, min(chunk * CHUNK + CHUNK, n))


@jit(parallel=True)
def _leaky_relu_parallel(x, y, negative_slope):
    n = y.size
    for chunk in prange((n + CHUNK - 1) // CHUNK):
        _leaky_relu_span(x, y, negative_slope, chunk * CHUNK, min(chunk * CHUNK + CHUNK, n))


@jit(parallel=True)
def _leaky_relu_backward_parallel(grad_y, x, grad_x, negative_slope):
    n = grad_x.size
    for chunk in prange((n + CHUNK - 1) // CHUNK):
        start, stop = chunk * CHUNK, min(chunk * CHUNK + CHUNK, n)
        _leaky_relu_backward_span(grad_y, x, grad_x, negative_slope, start, stop)


@jit(parallel=True)
def _sigmoid_parallel(x, y):
    n = y.size
    for chunk in prange((n + CHUNK - 1) // CHUNK):
        _sigmoid_span(x, y, chunk * CHUNK, min(chunk * CHUNK + CHUNK, n))


@jit(parallel=True)
def _sigmoid_backward_parallel(grad_y, y, grad_x):
    n = grad_x.size
    for chunk in prange((n + CHUNK - 1) // CHUNK):
        _sigmoid_backward_span(grad_y, y, grad_x, chunk * CHUNK, min(chunk * CHUNK + CHUNK, n))


@jit(parallel=True)
def _tanh_parallel(x, y):
    n = y.size
    for chunk in prange((n + CHUNK - 1) // CHUNK):
        _tanh_span(x, y, chunk * CHUNK, min(chunk * CHUNK + CHUNK, n))


@jit(parallel=True)
def _tanh_backward_parallel(grad_y, y, grad_x):
    n = grad_x.size
    for chunk in prange((n + CHUNK - 1) // CHUNK):
        _tanh_backward_span(grad_y, y, grad_x, chunk * CHUNK, min(chunk * CHUNK + CHUNK, n))


@jit
def _dropout_span(x, mask, y, scale, start, stop):
    # y = x * (mask * scale): a dropped NaN stays NaN, as PyTorch's x * mask * scale.
    for i in range(start, stop):
        y[i] = x[i] * (mask[i] * scale)


@jit(parallel=True)
def _dropout_parallel(x, mask, y, scale):
    n = y.size
    for chunk in prange((n + CHUNK - 1) // CHUNK):
        _dropout_span(x, mask, y, scale, chunk * CHUNK, min(chunk * CHUNK + CHUNK, n))


# ---------------------------------------------------------------------------- registered kernels

_census.declare("numba", "activation.serial", "activation.chunks")


def _serial(size: int) -> bool:
    """Arrays of one chunk run serially: no thread-pool start."""
    serial = size <= CHUNK
    _census.record("numba", "activation.serial" if serial else "activation.chunks")
    return serial


# An array of one chunk runs serially: starting the thread pool costs more than the work.


@register("relu", "numba")
def relu(x, y) -> None:
    if _serial(y.size):
        _relu_span(x, y, 0, y.size)
    else:
        _relu_parallel(x, y)


@register("relu_backward", "numba")
def relu_backward(grad_y, x, grad_x) -> None:
    if _serial(grad_x.size):
        _relu_backward_span(grad_y, x, grad_x, 0, grad_x.size)
    else:
        _relu_backward_parallel(grad_y, x, grad_x)


@register("leaky_relu", "numba")
def leaky_relu(x, y, negative_slope) -> None:
    if _serial(y.size):
        _leaky_relu_span(x, y, float(negative_slope), 0, y.size)
    else:
        _leaky_relu_parallel(x, y, float(negative_slope))


@register("leaky_relu_backward", "numba")
def leaky_relu_backward(grad_y, x, grad_x, negative_slope) -> None:
    if _serial(grad_x.size):
        _leaky_relu_backward_span(grad_y, x, grad_x, float(negative_slope), 0, grad_x.size)
    else:
        _leaky_relu_backward_parallel(grad_y, x, grad_x, float(negative_slope))


@register("sigmoid", "numba")
def sigmoid(x, y) -> None:
    if _serial(y.size):
        _sigmoid_span(x, y, 0, y.size)
    else:
        _sigmoid_parallel(x, y)


@register("sigmoid_backward", "numba")
def sigmoid_backward(grad_y, y, grad_x) -> None:
    if _serial(grad_x.size):
        _sigmoid_backward_span(grad_y, y, grad_x, 0, grad_x.size)
    else:
        _sigmoid_backward_parallel(grad_y, y, grad_x)


@register("tanh", "numba")
def tanh(x, y) -> None:
    if _serial(y.size):
        _tanh_span(x, y, 0, y.size)
    else:
        _tanh_parallel(x, y)


@register("tanh_backward", "numba")
def tanh_backward(grad_y, y, grad_x) -> None:
    if _serial(grad_x.size):
        _tanh_backward_span(grad_y, y, grad_x, 0, grad_x.size)
    else:
        _tanh_backward_parallel(grad_y, y, grad_x)


@register("dropout", "numba")
def dropout(x, mask, y, scale) -> None:
    scale = x.dtype.type(scale)  # multiply in x's dtype
    if _serial(y.size):
        _dropout_span(x, mask, y, scale, 0, y.size)
    else:
        _dropout_parallel(x, mask, y, scale)


@register("dropout_backward", "numba")
def dropout_backward(grad_y, mask, grad_x, scale) -> None:
    dropout(grad_y, mask, grad_x, scale)  # the same product
