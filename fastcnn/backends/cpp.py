"""The ``cpp`` backend: thin wrappers over the compiled extension ``fastcnn._cpp``.

The extension has one function per op and dtype (``relu_float32``, ``relu_float64``);
the wrappers here pick by dtype, pass the thread count (``fastcnn.set_num_threads``) and
record in the path census which path the kernel takes. The sources are in ``kernels/cpp``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from fastcnn import _census
from fastcnn._config import num_threads
from fastcnn.backends import register

try:
    import fastcnn._cpp as _cpp
except ModuleNotFoundError as error:  # absent; an extension that fails to load says why itself
    # The folder helps when a source checkout shadows the installed package.
    raise ImportError(
        "fastcnn._cpp is not built: the C++ build failed or was skipped when fastcnn was "
        f"installed (fastcnn imported from {Path(__file__).parents[1]})"
    ) from error


def _by_dtype(name: str) -> dict[np.dtype, Callable[..., None]]:
    return {np.dtype(dtype): getattr(_cpp, f"{name}_{dtype}") for dtype in ("float32", "float64")}


# ---------------------------------------------------------------------------- activations

_census.declare("cpp", "activation.serial", "activation.chunks")


def _elementwise_threads(size: int) -> int:
    """Arrays of one chunk run on the calling thread (no pool start): 1 thread."""
    serial = size <= _cpp.ELEMENTWISE_CHUNK
    _census.record("cpp", "activation.serial" if serial else "activation.chunks")
    return 1 if serial else num_threads()


def _register_unary(name: str) -> None:
    forward, backward = _by_dtype(name), _by_dtype(f"{name}_backward")

    def run(x, y):
        forward[x.dtype](x, y, _elementwise_threads(y.size))

    def run_backward(grad_y, saved, grad_x):
        backward[grad_x.dtype](grad_y, saved, grad_x, _elementwise_threads(grad_x.size))

    register(name, "cpp")(run)
    register(f"{name}_backward", "cpp")(run_backward)


for _name in ("relu", "sigmoid", "tanh"):
    _register_unary(_name)

_leaky_relu, _leaky_relu_backward = _by_dtype("leaky_relu"), _by_dtype("leaky_relu_backward")
_dropout = _by_dtype("dropout")


@register("leaky_relu", "cpp")
def leaky_relu(x, y, negative_slope):
    _leaky_relu[x.dtype](x, y, float(negative_slope), _elementwise_threads(y.size))


@register("leaky_relu_backward", "cpp")
def leaky_relu_backward(grad_y, x, grad_x, negative_slope):
    _leaky_relu_backward[x.dtype](
        grad_y, x, grad_x, float(negative_slope), _elementwise_threads(grad_x.size)
    )


@register("dropout", "cpp")
def dropout(x, mask, y, scale):
    _dropout[x.dtype](x, mask, y, float(scale), _elementwise_threads(y.size))


@register("dropout_backward", "cpp")
def dropout_backward(grad_y, mask, grad_x, scale):
    _dropout[grad_y.dtype](grad_y, mask, grad_x, float(scale), _elementwise_threads(grad_x.size))


# ---------------------------------------------------------------------------- softmax and loss

_census.declare("cpp", "softmax.serial", "softmax.blocks")

_softmax, _log_softmax = _by_dtype("softmax"), _by_dtype("log_softmax")
_cross_entropy, _cross_entropy_backward = (
    _by_dtype("cross_entropy"),
    _by_dtype("cross_entropy_backward"),
)
_soft_cross_entropy, _soft_cross_entropy_backward = (
    _by_dtype("soft_cross_entropy"),
    _by_dtype("soft_cross_entropy_backward"),
)


def _row_threads(size: int) -> int:
    """Inputs of one block run on the calling thread (no pool start): 1 thread."""
    serial = size <= _cpp.SOFTMAX_BLOCK
    _census.record("cpp", "softmax.serial" if serial else "softmax.blocks")
    return 1 if serial else num_threads()


@register("softmax", "cpp")
def softmax(x, y):
    _softmax[x.dtype](x, y, _row_threads(x.size))


@register("log_softmax", "cpp")
def log_softmax(x, y):
    _log_softmax[x.dtype](x, y, _row_threads(x.size))


@register("cross_entropy", "cpp")
def cross_entropy(logits, labels, weight, smoothing, losses):
    _cross_entropy[logits.dtype](
        logits, labels, weight, float(smoothing), losses, _row_threads(logits.size)
    )


@register("cross_entropy_backward", "cpp")
def cross_entropy_backward(logits, labels, weight, smoothing, row_scale, grad_logits):
    _cross_entropy_backward[logits.dtype](
        logits, labels, weight, float(smoothing), row_scale, grad_logits, _row_threads(logits.size)
    )


@register("soft_cross_entropy", "cpp")
def soft_cross_entropy(logits, targets, losses):
    _soft_cross_entropy[logits.dtype](logits, targets, losses, _row_threads(logits.size))


@register("soft_cross_entropy_backward", "cpp")
def soft_cross_entropy_backward(logits, targets, row_scale, grad_logits):
    _soft_cross_entropy_backward[logits.dtype](
        logits, targets, row_scale, grad_logits, _row_threads(logits.size)
    )


# ---------------------------------------------------------------------------- linear

_census.declare("cpp", "linear.serial", "linear.threads")

_linear, _linear_backward = _by_dtype("linear"), _by_dtype("linear_backward")


def _product_threads(x, weight) -> int:
    """Products (2 rows in out FLOPs) below the limit run on the calling thread: 1 thread."""
    serial = 2 * x.shape[0] * x.shape[1] * weight.shape[0] < _cpp.LINEAR_THREADED_FLOPS
    _census.record("cpp", "linear.serial" if serial else "linear.threads")
    return 1 if serial else num_threads()


@register("linear", "cpp")
def linear(x, weight, bias, y):
    _linear[x.dtype](x, weight, bias, y, _product_threads(x, weight))


@register("linear_backward", "cpp")
def linear_backward(grad_y, x, weight, grad_x, grad_weight, grad_bias):
    _linear_backward[x.dtype](
        grad_y, x, weight, grad_x, grad_weight, grad_bias, _product_threads(x, weight)
    )
