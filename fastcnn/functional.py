"""The functional API: PyTorch's semantics, NumPy (or CuPy) arrays in and out.

Any other DLPack array (a PyTorch tensor, a JAX array) is taken too, without a copy, and
the result comes back in its type (see ``fastcnn._arrays.accepts_dlpack``): a CPU tensor
runs on the CPU backends, a CUDA tensor on ``cuda``. Gradients are the ``*_backward``
functions; for PyTorch's autograd use ``fastcnn.torch``.

Every function follows the same four steps: check the arguments and compute the
output shape (``fastcnn._shapes``), pick the backend (``fastcnn.backends.select``),
allocate the outputs, run the kernel. Layout is NCHW; dtypes are float32 and
float64 and the output has the input's dtype. Every function takes a keyword-only
``backend=`` (``"reference"``, ``"numba"``, ``"cpp"`` or ``"cuda"``); single-output
functions also take ``out=``, an array of the output's shape and dtype to write into.

>>> import numpy as np
>>> import fastcnn.functional as F
>>> x = np.random.default_rng(0).standard_normal((2, 3, 8, 8), dtype=np.float32)
>>> w = np.ones((4, 3, 3, 3), np.float32)
>>> F.max_pool2d(F.relu(F.conv2d(x, w, padding=1)), 2).shape
(2, 4, 4, 4)
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from types import ModuleType

import numpy as np

from fastcnn import _shapes
from fastcnn._arrays import (
    accepts_dlpack,
    array_module,
    contiguous,
    empty,
    float_dtype,
    integer_indices,
)
from fastcnn._random import generator
from fastcnn.backends import algorithm_table, select

__all__ = [
    "avg_pool2d",
    "avg_pool2d_backward",
    "batch_norm",
    "batch_norm_backward",
    "conv2d",
    "conv2d_backward",
    "cross_entropy",
    "cross_entropy_backward",
    "dropout",
    "dropout_backward",
    "leaky_relu",
    "leaky_relu_backward",
    "linear",
    "linear_backward",
    "log_softmax",
    "max_pool2d",
    "max_pool2d_backward",
    "relu",
    "relu_backward",
    "sigmoid",
    "sigmoid_backward",
    "softmax",
    "tanh",
    "tanh_backward",
]


# ---------------------------------------------------------------------------- helpers


def _kernel(op: str, xp: ModuleType, backend: str | None):
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"backend must be a str or None, got {backend!r}")
    return select(op, on_gpu=xp is not np, keyword=backend)[1]


def _conv_algorithms(op: str, xp: ModuleType, backend, algo, g, directions, dtype):
    """The kernel for ``op`` and the keyword arguments that name its algorithm(s).

    ``algo`` is ``"auto"``, an algorithm's name, or (conv2d_backward) a pair of names for
    (input gradient, weight gradient). A name the backend does not offer, or one that
    cannot take one of ``directions`` of this case, raises ``ValueError`` naming those
    that can, before any kernel runs. ``"auto"`` is resolved here (the backend's
    heuristic or autotuning) so the kernel runs exactly the algorithm it is given.
    """
    name, kernel = select(op, on_gpu=xp is not np, keyword=backend)
    table = algorithm_table(op, name)
    pair = isinstance(algo, tuple) and len(algo) == 2 and all(isinstance(a, str) for a in algo)
    if isinstance(algo, str):
        wanted = {direction: algo for direction in directions}
    elif pair and op == "conv2d_backward":
        wanted = {"input_gradient": algo[0], "weight_gradient": algo[1]}
        wanted = {direction: wanted[direction] for direction in directions}
    else:
        expected = "a str" if op == "conv2d" else "a str or a pair (input, weight) of str"
        raise TypeError(f"algo must be {expected}, got {algo!r}")
    if table is None:
        bad = sorted({a for a in wanted.values() if a != "auto"})
        if bad:
            raise ValueError(f"backend {name!r} offers no algorithms for {op}, got algo={bad[0]!r}")
        return kernel, {}
    chosen = {}
    for direction, requested in wanted.items():
        if requested != "auto" and requested not in table.names:
            raise ValueError(
                f"algo must be 'auto' or one of {tuple(table.names)} on backend {name!r}, "
                f"got {requested!r}"
            )
        able = [a for a in table.names if table.takes(a, g, direction)]
        if requested == "auto":
            chosen[direction] = table.choose(g, direction, dtype) if g.N else able[-1]
        elif requested in able:
            chosen[direction] = requested
        else:
            what = direction.replace("_", " ")
            raise ValueError(
                f"algo={requested!r} cannot take the {what} of this convolution on backend "
                f"{name!r}; the algorithms that can: {able}"
            )
    if op == "conv2d":
        return kernel, {"algo": chosen["forward"]}
    return kernel, {"algo": (chosen.get("input_gradient"), chosen["weight_gradient"])}


def _output(xp: ModuleType, shape, dtype, out, inputs=()):
    """A fresh output, or ``out`` after checking that the kernel may write into it."""
    if out is None:
        return empty(xp, shape, dtype)
    if not isinstance(out, xp.ndarray):
        raise TypeError(f"out must be a {xp.__name__}.ndarray, got {type(out).__name__}")
    if out.shape != tuple(shape) or out.dtype != dtype:
        raise ValueError(
            f"out must have shape {tuple(shape)} and dtype {dtype}, got {out.shape} and {out.dtype}"
        )
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be C-contiguous and writeable")
    for name, array in inputs:
        if array is not None and xp.may_share_memory(out, array):
            raise ValueError(f"out must not overlap {name}")
    return out


def _outputs(xp: ModuleType, dtype, out, shapes, inputs):
    """Several outputs (``None`` shapes are not wanted): fresh, or checked from ``out``."""
    if out is None:
        return [None if shape is None else empty(xp, shape, dtype) for shape in shapes]
    if not isinstance(out, (tuple, list)) or len(out) != len(shapes):
        raise TypeError(f"out must be a tuple of {len(shapes)} arrays (or None), got {out!r}")
    outputs = []
    for shape, array in zip(shapes, out, strict=True):
        if shape is None:
            outputs.append(None)
        else:
            outputs.append(_output(xp, shape, dtype, array, inputs))
    return outputs


def _slope(negative_slope) -> float:
    return _shapes.real("negative_slope", negative_slope)


def _bias_flag(bias) -> bool:
    return _shapes.flag("bias", bias, "whether to return grad_bias")


def _scalar_gradient(grad_output, reduction: str) -> float:
    """The gradient of a reduced loss: a real number, or an array of one element
    (a 0-d array as PyTorch passes, or shape (1,))."""
    if isinstance(grad_output, numbers.Real) and not isinstance(grad_output, bool):
        return float(grad_output)
    size, kind = getattr(grad_output, "size", None), getattr(grad_output, "dtype", None)
    if size != 1 or getattr(kind, "kind", "") not in "fiu":
        raise ValueError(
            f"grad_output must be a real scalar or an array of one element for "
            f"reduction={reduction!r}, got {grad_output!r}"
        )
    return float(grad_output.reshape(()).item())


def _check_grad(grad_y, expected_shape) -> None:
    if grad_y.shape != tuple(expected_shape):
        raise ValueError(
            f"grad_y must have the forward output's shape {tuple(expected_shape)}, "
            f"got {grad_y.shape}"
        )


def _unbatched(inputs: tuple[str, ...], outputs: tuple[int, ...] | None = None):
    """Decorator: the op also takes PyTorch's unbatched (C, H, W) input. When ``x`` is
    3-D, ``inputs`` and the matching outputs (``outputs``: their positions in a tuple
    result and ``out``; None: every array) get a batch axis of one going in, and lose
    it coming out. Views only: nothing is copied."""

    def add(value):
        return value[None] if value is not None else None

    def drop(value):
        return value[0] if value is not None else None

    def each(value, change):
        if not isinstance(value, (tuple, list)):
            return change(value)
        return tuple(
            change(item) if outputs is None or i in outputs else item
            for i, item in enumerate(value)
        )

    def decorate(function):
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            if getattr(bound.arguments.get("x"), "ndim", None) != 3:
                return function(*args, **kwargs)
            for name in inputs:
                bound.arguments[name] = add(bound.arguments.get(name))
            given = bound.arguments.get("out")
            if given is not None:
                bound.arguments["out"] = each(given, add)
            result = each(function(*bound.args, **bound.kwargs), drop)
            if given is None:
                return result
            # An output written into ``out`` is returned as the caller's own array.
            if not isinstance(result, tuple):
                return given
            return tuple(
                mine if mine is not None else value
                for mine, value in zip(given, result, strict=True)
            )

        return wrapper

    return decorate


# ---------------------------------------------------------------------------- convolution


@accepts_dlpack
@_unbatched(("x",))
def conv2d(
    x,
    weight,
    bias=None,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    *,
    algo: str = "auto",
    out=None,
    backend: str | None = None,
):
    """2-D convolution (cross-correlation, as PyTorch), NCHW.

    Parameters
    ----------
    x : (N, C, H, W) array
    weight : (K, C/groups, R, S) array
    bias : (K,) array or None
    stride, dilation : int or pair of ints
    padding : int, pair of ints, ``"valid"`` or ``"same"`` (TensorFlow's rule, so
        ``"same"`` also works with stride > 1: output size ``ceil(H / stride)``)
    groups : int dividing C and K; ``groups == C`` is a depthwise convolution
    algo : ``"auto"`` (the backend chooses; see ``fastcnn.autotune`` and
        :func:`explain_conv2d`) or the name of one of the backend's algorithms, e.g.
        ``"direct"``, ``"im2col"``, ``"winograd"``; one that cannot take this case
        raises ``ValueError`` naming those that can
    out : (N, K, P, Q) array of x's dtype, C-contiguous, or None: written and returned
    backend : ``"reference"``, ``"numba"``, ``"cpp"``, ``"cuda"`` or None (see
        ``fastcnn.use_backend``: the keyword, the context, ``FASTCNN_BACKEND``, the array type)

    Returns
    -------
    (N, K, P, Q) array

    Examples
    --------
    >>> x = np.ones((1, 2, 5, 5), np.float32); w = np.ones((3, 2, 3, 3), np.float32)
    >>> conv2d(x, w, padding="same", stride=2).shape
    (1, 3, 3, 3)
    """
    xp = array_module(x=x, weight=weight, bias=bias)
    dtype = float_dtype(x=x, weight=weight, bias=bias)
    geometry = _shapes.conv2d_geometry(
        x.shape,
        weight.shape,
        None if bias is None else bias.shape,
        stride,
        padding,
        dilation,
        groups,
    )
    y = _output(xp, geometry.output_shape, dtype, out, [("x", x), ("weight", weight)])
    kernel, algo_args = _conv_algorithms("conv2d", xp, backend, algo, geometry, ("forward",), dtype)
    if y.size:
        kernel(
            contiguous(xp, x),
            contiguous(xp, weight),
            contiguous(xp, bias),
            y,
            geometry,
            **algo_args,
        )
    return y


@accepts_dlpack
@_unbatched(("grad_y", "x"), outputs=(0,))
def conv2d_backward(
    grad_y,
    x,
    weight,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    *,
    bias: bool = True,
    input_grad: bool = True,
    algo: str | tuple[str, str] = "auto",
    out=None,
    backend: str | None = None,
):
    """Gradients of :func:`conv2d`: ``(grad_x or None, grad_weight, grad_bias or None)``.

    Parameters
    ----------
    grad_y : (N, K, P, Q) array, the gradient of the forward output
    x, weight, stride, padding, dilation, groups : the forward call's
    bias : bool, whether to compute grad_bias
    input_grad : bool, whether to compute grad_x (``False`` for a network's first
        layer, whose input needs no gradient: it is often the costlier half)
    algo : ``"auto"``, one algorithm for both gradients, or a pair ``(input gradient,
        weight gradient)``: not every algorithm has both (Winograd has no weight
        gradient, a strided input gradient is im2col's); see :func:`conv2d`
    out : a tuple ``(grad_x, grad_weight, grad_bias)`` of arrays to write into, ``None``
        in place of those skipped; or None
    backend : as :func:`conv2d`

    Examples
    --------
    >>> x = np.ones((1, 2, 5, 5), np.float32); w = np.ones((3, 2, 3, 3), np.float32)
    >>> grad_x, grad_w, grad_b = conv2d_backward(np.ones((1, 3, 3, 3), np.float32), x, w)
    >>> grad_x.shape, grad_w.shape, grad_b.shape
    ((1, 2, 5, 5), (3, 2, 3, 3), (3,))
    """
    xp = array_module(grad_y=grad_y, x=x, weight=weight)
    dtype = float_dtype(grad_y=grad_y, x=x, weight=weight)
    geometry = _shapes.conv2d_geometry(
        x.shape, weight.shape, None, stride, padding, dilation, groups
    )
    _check_grad(grad_y, geometry.output_shape)
    with_bias = _bias_flag(bias)
    with_input = _shapes.flag("input_grad", input_grad, "whether to return grad_x")
    directions = ("input_gradient",) * with_input + ("weight_gradient",)
    kernel, algo_args = _conv_algorithms(
        "conv2d_backward", xp, backend, algo, geometry, directions, dtype
    )
    grad_x, grad_weight, grad_bias = _outputs(
        xp,
        dtype,
        out,
        [x.shape if with_input else None, weight.shape, (geometry.K,) if with_bias else None],
        [("grad_y", grad_y), ("x", x), ("weight", weight)],
    )
    if geometry.N == 0:
        grad_weight.fill(0)
        if grad_bias is not None:
            grad_bias.fill(0)
    else:
        kernel(
            contiguous(xp, grad_y),
            contiguous(xp, x),
            contiguous(xp, weight),
            grad_x,
            grad_weight,
            grad_bias,
            geometry,
            **algo_args,
        )
    return grad_x, grad_weight, grad_bias


# ---------------------------------------------------------------------------- pooling


@accepts_dlpack
@_unbatched(("x",))
def max_pool2d(
    x,
    kernel_size,
    stride=None,
    padding=0,
    dilation=1,
    ceil_mode=False,
    return_indices=False,
    *,
    out=None,
    backend: str | None = None,
):
    """2-D max pooling, NCHW (or unbatched (C, H, W)). A window holding a NaN gives NaN.

    A window of -inf only reports its first tap inside x. A window lying wholly in the
    padding (possible with dilation or ``ceil_mode``) gives -inf, as PyTorch, and index
    -1 (PyTorch's index there is unspecified); no gradient flows from it.

    Parameters
    ----------
    x : (N, C, H, W) or (C, H, W) array
    kernel_size : int or pair of ints
    stride : int, pair of ints, or None (the kernel size)
    padding : int or pair, at most half the kernel size (implicit -inf)
    dilation : int or pair of ints
    ceil_mode : bool, PyTorch's rule: round the output size up (a window must start
        inside the input or the left padding)
    return_indices : bool, also return the int64 position of each maximum, flattened
        over (H, W) of its plane, as PyTorch does
    out : array of the output's shape and x's dtype, or with ``return_indices`` a pair
        ``(y, indices)``; or None
    backend : as :func:`conv2d` (None: chosen by the array type)

    Returns
    -------
    y, or ``(y, indices)`` with ``return_indices``

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> max_pool2d(x, 2)[0, 0]
    array([[ 5.,  7.],
           [13., 15.]], dtype=float32)
    """
    xp = array_module(x=x)
    dtype = float_dtype(x=x)
    geometry = _shapes.pool2d_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    _shapes.flag("return_indices", return_indices)
    kernel = _kernel("max_pool2d", xp, backend)
    if return_indices:
        if out is not None and (not isinstance(out, (tuple, list)) or len(out) != 2):
            raise TypeError(f"out must be a pair (y, indices) with return_indices, got {out!r}")
        y_out, indices_out = (None, None) if out is None else out
        y = _output(xp, geometry.output_shape, dtype, y_out, [("x", x)])
        indices = _output(xp, geometry.output_shape, np.dtype(np.int64), indices_out, [("x", x)])
    else:
        y = _output(xp, geometry.output_shape, dtype, out, [("x", x)])
        indices = None
    if y.size:
        kernel(contiguous(xp, x), y, indices, geometry)
    return (y, indices) if return_indices else y


@accepts_dlpack
@_unbatched(("grad_y", "x", "indices"))
def max_pool2d_backward(
    grad_y,
    x,
    kernel_size,
    stride=None,
    padding=0,
    dilation=1,
    ceil_mode=False,
    *,
    indices=None,
    out=None,
    backend: str | None = None,
):
    """Gradient of :func:`max_pool2d` with respect to x: each output's gradient goes to
    its window's maximum.

    Parameters
    ----------
    grad_y : array of the forward output's shape
    x, kernel_size, stride, padding, dilation, ceil_mode : the forward call's
    indices : the forward's ``return_indices`` result (skips finding the maxima again),
        or None
    out : array of x's shape and dtype to write into, or None
    backend : as :func:`conv2d` (None: chosen by the array type)
    """
    xp = array_module(grad_y=grad_y, x=x, indices=indices)
    dtype = float_dtype(grad_y=grad_y, x=x)
    geometry = _shapes.pool2d_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    _check_grad(grad_y, geometry.output_shape)
    if indices is not None:
        if indices.shape != geometry.output_shape:
            raise ValueError(
                f"indices must have shape {geometry.output_shape}, got {indices.shape}"
            )
        # -1 marks a window lying wholly in the padding (see max_pool2d)
        indices = integer_indices("indices", indices, geometry.H * geometry.W, xp, lowest=-1)
    kernel = _kernel("max_pool2d_backward", xp, backend)
    grad_x = _output(xp, x.shape, dtype, out, [("grad_y", grad_y), ("x", x)])
    if grad_x.size:
        kernel(contiguous(xp, grad_y), contiguous(xp, x), indices, grad_x, geometry)
    return grad_x


@accepts_dlpack
@_unbatched(("x",))
def avg_pool2d(
    x,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
    *,
    out=None,
    backend: str | None = None,
):
    """2-D average pooling, NCHW (or unbatched (C, H, W)), with PyTorch's divisor rules.

    Parameters
    ----------
    x : (N, C, H, W) or (C, H, W) array
    kernel_size : int or pair of ints
    stride : int, pair of ints, or None (the kernel size)
    padding : int or pair, at most half the kernel size (implicit zeros)
    ceil_mode : bool, PyTorch's rule: round the output size up
    count_include_pad : bool, whether the padding counts in a window's divisor (the
        window is first clipped to the padded input, as PyTorch)
    divisor_override : nonzero int dividing every window's sum instead, or None
    out : array of the output's shape and x's dtype, or None
    backend : as :func:`conv2d` (None: chosen by the array type)

    Examples
    --------
    >>> avg_pool2d(np.ones((1, 1, 3, 3), np.float32), 2, padding=1,
    ...            count_include_pad=False)[0, 0]
    array([[1., 1.],
           [1., 1.]], dtype=float32)
    """
    xp = array_module(x=x)
    dtype = float_dtype(x=x)
    geometry = _shapes.pool2d_geometry(
        x.shape, kernel_size, stride, padding, 1, ceil_mode, count_include_pad, divisor_override
    )
    kernel = _kernel("avg_pool2d", xp, backend)
    y = _output(xp, geometry.output_shape, dtype, out, [("x", x)])
    if y.size:
        kernel(contiguous(xp, x), y, geometry)
    return y


@accepts_dlpack
@_unbatched(("grad_y", "x"))
def avg_pool2d_backward(
    grad_y,
    x,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
    *,
    out=None,
    backend: str | None = None,
):
    """Gradient of :func:`avg_pool2d` with respect to x.

    Parameters
    ----------
    grad_y : array of the forward output's shape
    x : the forward's input (its shape and dtype)
    kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override : the
        forward call's
    out : array of x's shape and dtype to write into, or None
    backend : as :func:`conv2d` (None: chosen by the array type)
    """
    xp = array_module(grad_y=grad_y, x=x)
    dtype = float_dtype(grad_y=grad_y, x=x)
    geometry = _shapes.pool2d_geometry(
        x.shape, kernel_size, stride, padding, 1, ceil_mode, count_include_pad, divisor_override
    )
    _check_grad(grad_y, geometry.output_shape)
    kernel = _kernel("avg_pool2d_backward", xp, backend)
    grad_x = _output(xp, x.shape, dtype, out, [("grad_y", grad_y)])
    if grad_x.size:
        kernel(contiguous(xp, grad_y), grad_x, geometry)
    return grad_x


# ---------------------------------------------------------------------------- activations
# Kernels see flat, contiguous arrays: the shape does not matter to an elementwise op.


def _in_place(x, out, inplace) -> tuple:
    """``(out, inplace)`` for an elementwise op asked to work in place: out is x itself
    where x is contiguous (reading and writing one array is safe elementwise), else None
    (the result is copied back into x)."""
    _shapes.flag("inplace", inplace)
    if not inplace:
        return out, False
    if out is not None:
        raise ValueError("pass out= or inplace=True, not both")
    if not getattr(x.flags, "writeable", True):
        raise ValueError("x must be writeable for inplace=True")
    return (x if x.flags.c_contiguous else None), True


def _elementwise(op: str, x, out, backend, *scalars, inplace=False):
    xp = array_module(x=x)
    dtype = float_dtype(x=x)
    out, inplace = _in_place(x, out, inplace)
    kernel = _kernel(op, xp, backend)
    y = _output(xp, x.shape, dtype, out)
    if y.size:
        kernel(contiguous(xp, x).reshape(-1), y.reshape(-1), *scalars)
    if inplace and y is not x:
        x[...] = y
        y = x
    return y


def _elementwise_backward(op: str, grad_y, saved, saved_name: str, out, backend, *scalars):
    xp = array_module(grad_y=grad_y, **{saved_name: saved})
    dtype = float_dtype(grad_y=grad_y, **{saved_name: saved})
    if grad_y.shape != saved.shape:
        raise ValueError(f"grad_y must have {saved_name}'s shape {saved.shape}, got {grad_y.shape}")
    kernel = _kernel(op, xp, backend)
    grad_x = _output(xp, saved.shape, dtype, out)
    if grad_x.size:
        kernel(
            contiguous(xp, grad_y).reshape(-1),
            contiguous(xp, saved).reshape(-1),
            grad_x.reshape(-1),
            *scalars,
        )
    return grad_x


@accepts_dlpack
def relu(x, inplace: bool = False, *, out=None, backend: str | None = None):
    """max(x, 0) elementwise; relu(NaN) is NaN.

    Parameters
    ----------
    x : array, any shape
    inplace : bool, overwrite x and return it (``out=x`` does the same)
    out : array of x's shape and dtype to write into, or None
    backend : as :func:`conv2d` (None: chosen by the array type)

    Examples
    --------
    >>> relu(np.array([-1.0, 2.0]))
    array([0., 2.])
    """
    return _elementwise("relu", x, out, backend, inplace=inplace)


@accepts_dlpack
def relu_backward(grad_y, x, *, out=None, backend: str | None = None):
    """Gradient of :func:`relu`: grad_y where x > 0, else 0.

    Parameters
    ----------
    grad_y : array of x's shape
    x : the forward's input, or its output (the same sign)
    out : array of x's shape and dtype to write into, or None
    backend : as :func:`conv2d` (None: chosen by the array type)
    """
    return _elementwise_backward("relu_backward", grad_y, x, "x", out, backend)


@accepts_dlpack
def leaky_relu(
    x, negative_slope=0.01, inplace: bool = False, *, out=None, backend: str | None = None
):
    """x where x > 0, else negative_slope * x.

    Parameters
    ----------
    x : array, any shape
    negative_slope : real number
    inplace, out, backend : as :func:`relu`

    Examples
    --------
    >>> leaky_relu(np.array([-1.0, 2.0]), 0.1)
    array([-0.1,  2. ])
    """
    return _elementwise("leaky_relu", x, out, backend, _slope(negative_slope), inplace=inplace)


@accepts_dlpack
def leaky_relu_backward(grad_y, x, negative_slope=0.01, *, out=None, backend: str | None = None):
    """Gradient of :func:`leaky_relu`: grad_y where x > 0, else negative_slope * grad_y.

    Parameters
    ----------
    grad_y : array of x's shape
    x : the forward's input, or its output when negative_slope >= 0 (the same sign)
    negative_slope : the forward's
    out : array of x's shape and dtype to write into, or None
    backend : as :func:`conv2d` (None: chosen by the array type)
    """
    return _elementwise_backward(
        "leaky_relu_backward", grad_y, x, "x", out, backend, _slope(negative_slope)
    )


@accepts_dlpack
def sigmoid(x, inplace: bool = False, *, out=None, backend: str | None = None):
    """1 / (1 + exp(-x)) elementwise, without overflow for large |x|.

    Parameters
    ----------
    x : array, any shape
    inplace, out, backend : as :func:`relu`

    Examples
    --------
    >>> sigmoid(np.array([0.0]))
    array([0.5])
    """
    return _elementwise("sigmoid", x, out, backend, inplace=inplace)


@accepts_dlpack
def sigmoid_backward(grad_y, y, *, out=None, backend: str | None = None):
    """Gradient of :func:`sigmoid`: grad_y * y * (1 - y).

    Parameters
    ----------
    grad_y : array of y's shape
    y : the forward's output
    out : array of y's shape and dtype to write into, or None
    backend : as :func:`conv2d` (None: chosen by the array type)
    """
    return _elementwise_backward("sigmoid_backward", grad_y, y, "y", out, backend)


@accepts_dlpack
def tanh(x, inplace: bool = False, *, out=None, backend: str | None = None):
    """Hyperbolic tangent elementwise.

    Parameters
    ----------
    x : array, any shape
    inplace, out, backend : as :func:`relu`

    Examples
    --------
    >>> tanh(np.array([0.0]))
    array([0.])
    """
    return _elementwise("tanh", x, out, backend, inplace=inplace)


@accepts_dlpack
def tanh_backward(grad_y, y, *, out=None, backend: str | None = None):
    """Gradient of :func:`tanh`: grad_y * (1 - y**2).

    Parameters
    ----------
    grad_y : array of y's shape
    y : the forward's output
    out : array of y's shape and dtype to write into, or None
    backend : as :func:`conv2d` (None: chosen by the array type)
    """
    return _elementwise_backward("tanh_backward", grad_y, y, "y", out, backend)


# ---------------------------------------------------------------------------- batch norm


def _channel_rows(xp, x):
    """x (N, C, ...) as a contiguous (N, C, L) view or copy."""
    return contiguous(xp, x).reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))


def _batch_norm_args(x, weight, bias, running_mean, running_var, training, eps, **others):
    xp = array_module(x=x, weight=weight, bias=bias, running_mean=running_mean,
                      running_var=running_var, **others)  # fmt: skip
    dtype = float_dtype(x=x, weight=weight, bias=bias, running_mean=running_mean,
                        running_var=running_var, **others)  # fmt: skip
    if x.ndim < 2 and not (x.ndim == 1 and x.size == 0):  # PyTorch takes an empty (0,) too
        raise ValueError(f"x must be (N, C, ...) with at least 2 axes, got shape {x.shape}")
    C = x.shape[1] if x.ndim > 1 else 0
    for name, array in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                        ("running_var", running_var)):  # fmt: skip
        if array is not None and array.shape != (C,):
            raise ValueError(f"{name} must have shape ({C},), one per channel, got {array.shape}")
    _shapes.flag("training", training)
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool) or not eps > 0:
        raise ValueError(f"eps must be a positive real number, got {eps!r}")
    if not training and (running_mean is None or running_var is None):
        raise ValueError("running_mean and running_var are needed when training=False")
    values = math.prod(x.shape) // C if C else 0
    if training and x.shape[0] and values <= 1:
        raise ValueError(
            f"training needs more than one value per channel, got input of shape {x.shape}"
        )
    return xp, dtype


def _update_running(xp, running_mean, running_var, mean, var, count: int, momentum: float):
    """PyTorch's rule, in place: running = (1 - momentum) * running + momentum * batch,
    with the batch variance unbiased (count values per channel)."""
    unbiased = var * (count / max(count - 1, 1))
    if running_mean is not None:
        running_mean[...] = (1 - momentum) * running_mean + momentum * mean
    if running_var is not None:
        running_var[...] = (1 - momentum) * running_var + momentum * unbiased


@accepts_dlpack
def batch_norm(
    x,
    running_mean=None,
    running_var=None,
    weight=None,
    bias=None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    return_stats: bool = False,
    out=None,
    backend: str | None = None,
):
    """Batch normalisation over axis 1 of (N, C, ...): ``(x - mean) / sqrt(var + eps) *
    weight + bias`` per channel, as ``torch.nn.functional.batch_norm`` (same arguments,
    same order).

    Parameters
    ----------
    x : (N, C, ...) array
    running_mean, running_var : (C,) arrays or None. ``training=False`` normalises with
        them (both needed). With ``training=True`` the batch's mean and biased variance
        normalise, and the running statistics given are updated in place, as PyTorch:
        ``running = (1 - momentum) * running + momentum * batch`` (the batch variance
        unbiased)
    weight, bias : (C,) arrays or None, the affine parameters
    training : bool, which statistics normalise (see above)
    momentum : real number, the running statistics' update factor
    eps : positive real number added to the variance
    return_stats : bool, also return the statistics used: ``(y, mean, var)``
    out : array of x's shape and dtype to write y into, or None
    backend : as :func:`conv2d` (None: chosen by the array type)

    Examples
    --------
    >>> x = np.arange(8.0).reshape(2, 2, 2)
    >>> batch_norm(x, training=True)[0].round(4)
    array([[-1.2127, -0.7276],
           [-1.2127, -0.7276]])
    """
    xp, dtype = _batch_norm_args(x, weight, bias, running_mean, running_var, training, eps)
    momentum = _shapes.real("momentum", momentum)
    _shapes.flag("return_stats", return_stats)
    if x.ndim == 1:  # empty (0,): no channel axis, nothing to normalise
        y = _output(xp, x.shape, dtype, out, [("x", x)])
        nothing = empty(xp, (0,), dtype)
        return (y, nothing, nothing.copy()) if return_stats else y
    C = x.shape[1]
    rows = _channel_rows(xp, x)
    if training:
        # float64, whatever x's dtype: x - mean must not inherit the rounding of a large mean.
        mean, var = empty(xp, (C,), np.float64), empty(xp, (C,), np.float64)
        if x.size:
            _kernel("batch_norm_statistics", xp, backend)(rows, mean, var)
        else:
            mean.fill(np.nan)
            var.fill(np.nan)
    else:
        mean, var = contiguous(xp, running_mean), contiguous(xp, running_var)
    kernel = _kernel("batch_norm", xp, backend)
    y = _output(xp, x.shape, dtype, out, [("x", x)])
    if y.size:
        kernel(rows, mean, var, contiguous(xp, weight), contiguous(xp, bias),
               y.reshape(rows.shape), float(eps))  # fmt: skip
    if training and x.size:
        _update_running(xp, running_mean, running_var, mean, var, x.size // C, momentum)
    if return_stats and training:
        return y, mean.astype(dtype), var.astype(dtype)
    return (y, mean, var) if return_stats else y


@accepts_dlpack
def batch_norm_backward(
    grad_y,
    x,
    running_mean=None,
    running_var=None,
    weight=None,
    training: bool = False,
    eps: float = 1e-5,
    *,
    input_grad: bool = True,
    out=None,
    backend: str | None = None,
):
    """Gradients of :func:`batch_norm`: ``(grad_x or None, grad_weight, grad_bias)``
    (grad_weight and grad_bias are None without ``weight``).

    Parameters
    ----------
    grad_y : array of x's shape
    x, running_mean, running_var, weight, training, eps : the forward call's (nothing is
        updated here); in training the batch statistics are recomputed from x
    input_grad : bool, whether to compute grad_x
    out : a tuple ``(grad_x, grad_weight, grad_bias)`` of arrays to write into, ``None``
        in place of those skipped; or None
    backend : as :func:`conv2d` (None: chosen by the array type)
    """
    xp, dtype = _batch_norm_args(
        x, weight, None, running_mean, running_var, training, eps, grad_y=grad_y
    )
    _check_grad(grad_y, x.shape)
    with_input = _shapes.flag("input_grad", input_grad, "whether to return grad_x")
    C = x.shape[1] if x.ndim > 1 else 0
    affine = weight is not None
    grad_x, grad_weight, grad_bias = _outputs(
        xp, dtype, out,
        [x.shape if with_input else None, (C,) if affine else None, (C,) if affine else None],
        [("grad_y", grad_y), ("x", x)],
    )  # fmt: skip
    if x.ndim == 1:
        return grad_x, grad_weight, grad_bias
    rows = _channel_rows(xp, x)
    if training:
        mean, var = empty(xp, (C,), np.float64), empty(xp, (C,), np.float64)
        if x.size:
            _kernel("batch_norm_statistics", xp, backend)(rows, mean, var)
    else:
        mean, var = contiguous(xp, running_mean), contiguous(xp, running_var)
    kernel = _kernel("batch_norm_backward", xp, backend)
    sums = (grad_weight, grad_bias) if affine else (empty(xp, (C,), dtype), empty(xp, (C,), dtype))
    if x.size:
        kernel(
            contiguous(xp, grad_y).reshape(rows.shape), rows, mean, var, contiguous(xp, weight),
            None if grad_x is None else grad_x.reshape(rows.shape), *sums, float(eps), training,
        )  # fmt: skip
    else:
        for array in sums:
            array.fill(0)
    return grad_x, grad_weight, grad_bias


# ---------------------------------------------------------------------------- dropout


def _dropout_scale(p) -> float:
    p = _shapes.fraction("p", p)
    return 0.0 if p == 1 else 1.0 / (1.0 - p)


def _check_mask(xp, mask, shape) -> None:
    array_module(mask=mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"mask must be a bool array (True: kept), got {mask.dtype}")
    if mask.shape != tuple(shape):
        raise ValueError(f"mask must have x's shape {tuple(shape)}, got {mask.shape}")


@accepts_dlpack
def dropout(
    x,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    mask=None,
    return_mask: bool = False,
    out=None,
    backend: str | None = None,
):
    """Zero each element with probability ``p`` and scale the others by 1 / (1 - p), as
    ``torch.nn.functional.dropout`` (a dropped NaN stays NaN, as there).

    Parameters
    ----------
    x : array, any shape
    p : real number in [0, 1], the probability of zeroing
    training : bool; ``False`` returns a copy of x (into ``out``)
    inplace : bool, overwrite x and return it
    mask : bool array of x's shape, True where kept, or None: drawn from fastcnn's
        generator (``fastcnn.manual_seed``)
    return_mask : bool, return ``(y, mask)`` for :func:`dropout_backward`
    out : array of x's shape and dtype to write into, or None
    backend : as :func:`conv2d` (None: chosen by the array type)

    Examples
    --------
    >>> y, mask = dropout(np.ones((2, 3), np.float32), 0.5, mask=np.eye(2, 3, dtype=bool),
    ...                   return_mask=True)
    >>> y
    array([[2., 0., 0.],
           [0., 2., 0.]], dtype=float32)
    """
    xp = array_module(x=x, mask=mask)
    dtype = float_dtype(x=x)
    scale = _dropout_scale(p)
    _shapes.flag("training", training)
    _shapes.flag("return_mask", return_mask)
    if mask is None:
        if training:
            keep = generator().random(x.shape) >= p
            mask = keep if xp is np else xp.asarray(keep)
        else:
            mask = xp.ones(x.shape, np.bool_)
    else:
        _check_mask(xp, mask, x.shape)
    if not training:
        scale = 1.0
    out, inplace = _in_place(x, out, inplace)
    kernel = _kernel("dropout", xp, backend)
    y = _output(xp, x.shape, dtype, out, [] if inplace else [("x", x)])
    if y.size:
        kernel(
            contiguous(xp, x).reshape(-1), contiguous(xp, mask).reshape(-1), y.reshape(-1), scale
        )
    if inplace and y is not x:
        x[...] = y
        y = x
    return (y, mask) if return_mask else y


@accepts_dlpack
def dropout_backward(grad_y, mask, p: float = 0.5, *, out=None, backend: str | None = None):
    """Gradient of :func:`dropout` with respect to x: ``grad_y * mask / (1 - p)``.

    Parameters
    ----------
    grad_y : array of the mask's shape
    mask, p : the forward's mask (``return_mask=True``) and probability
    out : array of grad_y's shape and dtype to write into, or None
    backend : as :func:`conv2d` (None: chosen by the array type)
    """
    xp = array_module(grad_y=grad_y, mask=mask)
    dtype = float_dtype(grad_y=grad_y)
    scale = _dropout_scale(p)
    if grad_y.shape != mask.shape:
        raise ValueError(f"grad_y must have the mask's shape {mask.shape}, got {grad_y.shape}")
    _check_mask(xp, mask, grad_y.shape)
    kernel = _kernel("dropout_backward", xp, backend)
    grad_x = _output(xp, grad_y.shape, dtype, out, [("grad_y", grad_y)])
    if grad_x.size:
        kernel(
            contiguous(xp, grad_y).reshape(-1), contiguous(xp, mask).reshape(-1),
            grad_x.reshape(-1), scale,
        )  # fmt: skip
    return grad_x


# ---------------------------------------------------------------------------- linear


@accepts_dlpack
def linear(x, weight, bias=None, *, out=None, backend: str | None = None):
    """``x @ weight.T + bias`` over x's last axis, as ``torch.nn.functional.linear``.

    Parameters
    ----------
    x : (..., in_features) array: 1-D, 2-D or more (the leading axes are kept)
    weight : (out_features, in_features) array
    bias : (out_features,) array or None
    out : (..., out_features) array of x's dtype to write into, or None
    backend : as :func:`conv2d` (None: chosen by the array type)

    Examples
    --------
    >>> linear(np.ones((2, 3)), np.ones((4, 3)), np.zeros(4)).shape
    (2, 4)
    """
    xp = array_module(x=x, weight=weight, bias=bias)
    dtype = float_dtype(x=x, weight=weight, bias=bias)
    rows, in_features, out_features = _shapes.linear_shapes(
        x.shape, weight.shape, None if bias is None else bias.shape
    )
    kernel = _kernel("linear", xp, backend)
    y = _output(xp, (*x.shape[:-1], out_features), dtype, out, [("x", x), ("weight", weight)])
    if rows:
        kernel(
            contiguous(xp, x).reshape(rows, in_features),
            contiguous(xp, weight),
            contiguous(xp, bias),
            y.reshape(rows, out_features),
        )
    return y


@accepts_dlpack
def linear_backward(
    grad_y,
    x,
    weight,
    *,
    bias: bool = True,
    input_grad: bool = True,
    out=None,
    backend: str | None = None,
):
    """Gradients of :func:`linear`: ``(grad_x or None, grad_weight, grad_bias or None)``.

    Parameters
    ----------
    grad_y : (..., out_features) array, the gradient of the forward output
    x, weight : the forward call's
    bias : bool, whether to compute grad_bias
    input_grad : bool, whether to compute grad_x (as :func:`conv2d_backward`)
    out : a tuple ``(grad_x, grad_weight, grad_bias)`` of arrays to write into, ``None``
        in place of those skipped; or None
    backend : as :func:`conv2d` (None: chosen by the array type)
    """
    xp = array_module(grad_y=grad_y, x=x, weight=weight)
    dtype = float_dtype(grad_y=grad_y, x=x, weight=weight)
    rows, in_features, out_features = _shapes.linear_shapes(x.shape, weight.shape, None)
    _check_grad(grad_y, (*x.shape[:-1], out_features))
    with_bias = _bias_flag(bias)
    with_input = _shapes.flag("input_grad", input_grad, "whether to return grad_x")
    kernel = _kernel("linear_backward", xp, backend)
    grad_x, grad_weight, grad_bias = _outputs(
        xp,
        dtype,
        out,
        [x.shape if with_input else None, weight.shape, (out_features,) if with_bias else None],
        [("grad_y", grad_y), ("x", x), ("weight", weight)],
    )
    if rows == 0:
        grad_weight.fill(0)
        if grad_bias is not None:
            grad_bias.fill(0)
    else:
        kernel(
            contiguous(xp, grad_y).reshape(rows, out_features),
            contiguous(xp, x).reshape(rows, in_features),
            contiguous(xp, weight),
            None if grad_x is None else grad_x.reshape(rows, in_features),
            grad_weight,
            grad_bias,
        )
    return grad_x, grad_weight, grad_bias


# ---------------------------------------------------------------------------- softmax and loss
# Kernels see (rows, classes) and reduce over the last axis; the axis moves here.


def _rows_last(xp, x, axis: int):
    """x with ``axis`` moved last, contiguous, as (rows, classes)."""
    moved = xp.moveaxis(x, axis, -1)
    rows = math.prod(moved.shape[:-1])  # not -1: an empty axis leaves it ambiguous
    return xp.ascontiguousarray(moved).reshape(rows, x.shape[axis]), moved.shape


def _softmax_family(op: str, x, axis, dim, dtype, out, backend):
    if dim is not None:  # PyTorch's name
        if axis is not None:
            raise TypeError("pass axis= or dim= (its PyTorch name), not both")
        axis = dim
    axis = -1 if axis is None else axis
    xp = array_module(x=x)
    if dtype is not None:  # PyTorch's dtype=: the input is cast first
        try:
            wanted = np.dtype(dtype)
        except TypeError:
            wanted = None
        if wanted is None or wanted.type not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
        x = x.astype(wanted, copy=False)
    if x.ndim == 0:  # PyTorch: a scalar is a one-element axis 0 (or -1)
        if not _shapes._is_int(axis) or axis not in (0, -1):
            raise ValueError(f"axis must be 0 or -1 for a 0-d x, got {axis!r}")
        vector_out = None if out is None else _output(xp, (), float_dtype(x=x), out).reshape(1)
        y = _softmax_family(op, x.reshape(1), 0, None, None, vector_out, backend)
        return out if out is not None else y.reshape(())
    dtype = float_dtype(x=x)
    axis = _shapes.normalize_axis(axis, x.ndim)
    kernel = _kernel(op, xp, backend)
    rows, moved_shape = _rows_last(xp, x, axis)
    if axis == x.ndim - 1:
        y = _output(xp, x.shape, dtype, out, [("x", x)])
        y_rows = y.reshape(rows.shape)
    else:
        y, y_rows = None, empty(xp, rows.shape, dtype)
    if rows.size:
        kernel(rows, y_rows)
    if y is None:
        y = _output(xp, x.shape, dtype, out, [("x", x)])
        y[...] = xp.moveaxis(y_rows.reshape(moved_shape), -1, axis)
    return y


@accepts_dlpack
def softmax(
    x, axis: int | None = None, *, dim=None, dtype=None, out=None, backend: str | None = None
):
    """exp(x) / sum(exp(x)) along ``axis``, stable for any magnitude of x.

    Parameters
    ----------
    x : array, any shape; a 0-d x is one element
    axis : int, the axis reduced over (default: the last)
    dim : PyTorch's name for ``axis``
    dtype : float32 or float64, to cast x to first (PyTorch's ``dtype=``), or None
    out : array of x's shape and the result's dtype to write into, or None
    backend : as :func:`conv2d` (None: chosen by the array type)

    Examples
    --------
    >>> softmax(np.array([[1e8, 1e8]]))
    array([[0.5, 0.5]])
    """
    return _softmax_family("softmax", x, axis, dim, dtype, out, backend)


@accepts_dlpack
def log_softmax(
    x, axis: int | None = None, *, dim=None, dtype=None, out=None, backend: str | None = None
):
    """x - logsumexp(x) along ``axis``, stable for any magnitude of x.

    Parameters
    ----------
    x, axis, dim, dtype, out, backend : as :func:`softmax`

    Examples
    --------
    >>> log_softmax(np.array([0.0, 0.0]))
    array([-0.69314718, -0.69314718])
    """
    return _softmax_family("log_softmax", x, axis, dim, dtype, out, backend)


class _Loss:
    """A cross-entropy call, checked and laid out as the kernels take it: rows of logits
    (M, C), and either int64 labels (M,) (-1 where ignored) with class weights, or
    targets (M, C) with the class weights and smoothing folded in."""

    def __init__(self, logits, target, weight, ignore_index, reduction, label_smoothing):
        if isinstance(weight, str):
            raise TypeError(
                f"weight must be an array of class weights or None, got {weight!r} "
                "(pass reduction= by keyword)"
            )
        self.xp = xp = array_module(logits=logits, target=target, weight=weight)
        self.dtype = float_dtype(logits=logits, weight=weight)
        rows, classes, self.soft, self.loss_shape = _shapes.cross_entropy_shapes(
            logits.shape, target.shape, reduction
        )
        if weight is not None and weight.shape != (classes,):
            raise ValueError(f"weight must have shape ({classes},), got {weight.shape}")
        if not _shapes._is_int(ignore_index):
            raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
        smoothing = _shapes.fraction("label_smoothing", label_smoothing)
        self.reduction, self.smoothing, self.classes = reduction, smoothing, classes
        self.unbatched = logits.ndim == 1
        if self.unbatched:  # (C,): one row
            logits, target = logits[None], target[None]
        self.logit_rows, self.moved_shape = _rows_last(xp, logits, 1)
        self.weight = weight
        if self.soft:
            float_dtype(logits=logits, target=target)
            if ignore_index >= 0:
                raise ValueError("ignore_index applies to class-index targets, not probabilities")
            targets, _ = _rows_last(xp, target, 1)
            if smoothing:  # never in place: targets may be the caller's own array
                targets = targets * (1 - smoothing) + smoothing / classes
            if weight is not None:
                targets = targets * weight
            self.targets, self.labels = targets, None
        else:
            self.labels, self.kept = _class_labels(xp, target, classes, ignore_index, rows)

    def divisor(self):
        """What "mean" divides the summed losses by: the rows, or for class indices the
        summed weight of the labels kept, as PyTorch (NaN-making 0 when none is kept)."""
        if self.soft:
            return float(self.logit_rows.shape[0])
        if self.weight is None:
            return float(self.kept.sum()) if self.kept is not None else float(self.labels.size)
        kept = self.labels if self.kept is None else self.labels[self.kept]
        return float(self.weight[kept].sum(dtype=self.xp.float64))

    def class_weight(self):
        xp = self.xp
        if self.weight is None:
            return xp.ones(self.classes, self.dtype)
        return contiguous(xp, self.weight)

    def restore(self, rows_shaped):
        """Rows (M, C) back in the logits' layout."""
        moved = rows_shaped.reshape(self.moved_shape)
        restored = self.xp.moveaxis(moved, -1, 1)
        return restored[0] if self.unbatched else restored


def _class_labels(xp, target, classes: int, ignore_index: int, rows: int):
    """int64 labels in [0, classes), -1 where ``target == ignore_index``; and the mask of
    labels kept (None when none is ignored)."""
    if target.dtype.kind not in "iu":
        raise TypeError(
            f"target must be an integer array of class indices, or class probabilities of the "
            f"logits' shape and dtype, got {target.dtype} of shape {target.shape}"
        )
    labels = xp.ascontiguousarray(target, dtype=xp.int64).reshape(rows)
    kept = None
    if labels.size and int(labels.min()) <= ignore_index <= int(labels.max()):
        kept = labels != ignore_index
        labels = xp.where(kept, labels, -1)  # a new array: target is never written
    checked = labels if kept is None else labels[kept]
    if checked.size:
        low, high = int(checked.min()), int(checked.max())
        if low < 0 or high >= classes:
            raise ValueError(
                f"target must hold class indices in [0, {classes}) (or ignore_index="
                f"{ignore_index}), got values in [{low}, {high}]"
            )
    return labels, kept


@accepts_dlpack
def cross_entropy(
    logits,
    target,
    weight=None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    out=None,
    backend: str | None = None,
):
    """Softmax cross-entropy, as ``torch.nn.functional.cross_entropy``.

    A class the target gives no weight adds nothing, also where its logit is -inf
    (PyTorch gives NaN there).

    Parameters
    ----------
    logits : (N, C), (N, C, d1, ...) or unbatched (C,) array of scores
    target : class indices, an integer array of shape (N,), (N, d1, ...) or () in
        [0, C); or class probabilities (soft targets), of the logits' shape and dtype
    weight : (C,) array of the logits' dtype weighting each class's loss, or None
    ignore_index : int, a class index whose targets add nothing to the loss nor to the
        "mean" divisor (class-index targets only)
    reduction : ``"mean"`` (divided by the summed weight of the targets kept, or by
        N * d1 * ... for probabilities; NaN when nothing is kept), ``"sum"``, or
        ``"none"`` (one loss per target position)
    label_smoothing : real number in [0, 1]; the target becomes (1 - s) * target + s / C
    out : array to write the result into (the targets' positions for ``"none"``, 0-d
        otherwise), or None
    backend : as :func:`conv2d` (None: chosen by the array type)

    Examples
    --------
    >>> float(cross_entropy(np.array([[0.0, 0.0]]), np.array([1])))  # log 2
    0.6931471805599453
    """
    loss = _Loss(logits, target, weight, ignore_index, reduction, label_smoothing)
    xp, dtype = loss.xp, loss.dtype
    if reduction == "none":
        result = _output(xp, loss.loss_shape, dtype, out, [("logits", logits)])
        losses = result.reshape(loss.logit_rows.shape[0])
    else:
        result = _output(xp, (), dtype, out, [("logits", logits)])
        losses = empty(xp, loss.logit_rows.shape[0], dtype)
    if losses.size:
        if loss.soft:
            _kernel("soft_cross_entropy", xp, backend)(loss.logit_rows, loss.targets, losses)
        else:
            _kernel("cross_entropy", xp, backend)(
                loss.logit_rows, loss.labels, loss.class_weight(), loss.smoothing, losses
            )
    if reduction != "none":
        total = losses.sum(dtype=xp.float64)
        if reduction == "mean":
            with np.errstate(divide="ignore", invalid="ignore"):
                total = total / xp.float64(loss.divisor()) if losses.size else xp.float64(np.nan)
        result[...] = total
    return result


@accepts_dlpack
def cross_entropy_backward(
    logits,
    target,
    weight=None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    grad_output=None,
    out=None,
    backend: str | None = None,
):
    """Gradient of :func:`cross_entropy` with respect to the logits.

    Parameters
    ----------
    logits, target, weight, ignore_index, reduction, label_smoothing : the forward call's
    grad_output : the gradient of the loss: a real number or one-element array for
        ``"mean"`` and ``"sum"``, an array of the targets' positions for ``"none"``; or
        None (ones)
    out : array of the logits' shape and dtype to write into, or None
    backend : as :func:`conv2d` (None: chosen by the array type)

    Targets ignored get a zero gradient.
    """
    loss = _Loss(logits, target, weight, ignore_index, reduction, label_smoothing)
    xp, dtype = loss.xp, loss.dtype
    rows = loss.logit_rows.shape[0]
    if reduction == "none":
        if grad_output is None:
            row_scale = xp.ones(rows, dtype)
        else:
            array_module(grad_output=grad_output, logits=logits)
            float_dtype(grad_output=grad_output, logits=logits)
            if grad_output.shape != loss.loss_shape:
                raise ValueError(
                    f"grad_output must have the targets' shape {loss.loss_shape}, "
                    f"got {grad_output.shape}"
                )
            row_scale = xp.ascontiguousarray(grad_output).reshape(rows)
    else:
        scale = 1.0
        if grad_output is not None:
            scale = _scalar_gradient(grad_output, reduction)
        if reduction == "mean" and rows:
            with np.errstate(divide="ignore", invalid="ignore"):
                scale = float(np.float64(scale) / np.float64(loss.divisor()))
        row_scale = xp.full(rows, scale, dtype)
    if logits.ndim <= 2:  # rows are the logits' own layout: write straight into the result
        grad_logits = _output(xp, logits.shape, dtype, out, [("logits", logits)])
        grad_rows = grad_logits.reshape(loss.logit_rows.shape)
    else:
        grad_logits = None
        grad_rows = empty(xp, loss.logit_rows.shape, dtype)
    if grad_rows.size:
        if loss.soft:
            _kernel("soft_cross_entropy_backward", xp, backend)(
                loss.logit_rows, loss.targets, row_scale, grad_rows
            )
        else:
            _kernel("cross_entropy_backward", xp, backend)(
                loss.logit_rows,
                loss.labels,
                loss.class_weight(),
                loss.smoothing,
                row_scale,
                grad_rows,
            )
    if grad_logits is None:
        grad_logits = _output(xp, logits.shape, dtype, out, [("logits", logits)])
        grad_logits[...] = loss.restore(grad_rows)
    return grad_logits
