"""fastcnn's kernels as PyTorch custom ops (namespace ``fastcnn::``), with autograd.

Each kernel family registers a forward and a backward op with
``torch.library.custom_op``. The forward's ``register_autograd`` calls the backward op
(fastcnn's own backward kernels), so the backward pass of a compiled graph holds custom
ops too and breaks no graph. ``register_fake`` gives each op's output shapes by PyTorch's
rules, so shapes (also symbolic ones) propagate under ``torch.compile``.

How tensors reach the kernels:

- CPU tensors: ``tensor.numpy()``, a view (no copy); a result is fastcnn's own NumPy
  output wrapped by ``torch.from_numpy`` (no copy). They run on the CPU backends (the
  fastest available, or the one named by ``backend=``).
- CUDA tensors: ``cupy.from_dlpack`` and ``torch.from_dlpack`` back (no copies), with
  CuPy's current stream set to PyTorch's current stream (``cupy.cuda.ExternalStream``):
  the kernels run in order with PyTorch's work and nothing waits for the host, except
  where fastcnn checks integer inputs on the host before a kernel (max-pooling's backward
  reads the range of the saved indices; cross-entropy that of the labels, and its mean's
  divisor). They run on ``cuda``.
- A non-contiguous tensor is made contiguous first: that is a copy.

The functions here take PyTorch's ``torch.nn.functional`` arguments and call the ops:

>>> import torch, fastcnn.torch as ft
>>> x = torch.randn(2, 3, 8, 8, requires_grad=True)
>>> y = ft.max_pool2d(ft.relu(ft.conv2d(x, torch.randn(4, 3, 3, 3), padding=1)), 2)
>>> y.sum().backward()
>>> x.grad.shape
torch.Size([2, 3, 8, 8])
"""

# No ``from __future__ import annotations``: torch.library reads the annotations below
# to infer each op's schema.

import contextlib
import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

import fastcnn.functional as F
from fastcnn import _shapes
from fastcnn.backends import BACKENDS, record

__all__ = [
    "avg_pool2d",
    "backend_for",
    "batch_norm",
    "conv2d",
    "cross_entropy",
    "leaky_relu",
    "linear",
    "max_pool2d",
    "relu",
    "sigmoid",
    "tanh",
]


# ---------------------------------------------------------------------------- tensors and arrays


def backend_for(device: str, backend: str | None) -> str | None:
    """The ``backend=`` a call on tensors of ``device`` (``"cpu"`` or ``"cuda"``) passes to
    fastcnn, from the ``backend`` asked for.

    ``None`` lets the array type choose: the fastest CPU backend for CPU tensors,
    ``cuda`` for CUDA tensors. A named backend must run where the tensors are
    (``cuda-emu``, the CUDA kernels emulated on the CPU, takes CPU tensors).

    >>> backend_for("cpu", None), backend_for("cuda", "cuda")
    (None, 'cuda')
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"fastcnn runs CPU and CUDA tensors, got tensors on {device!r}")
    if backend is None:
        return None
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    runs_on = "cuda" if record(backend).device == "gpu" else "cpu"
    if runs_on != device:
        raise ValueError(
            f"backend {backend!r} runs on {runs_on.upper()} tensors, got tensors on {device}"
        )
    return backend


def _array(tensor: Tensor | None):
    """The tensor's memory as a NumPy (CPU) or CuPy (CUDA) array: a view, unless the
    tensor is strided (then a contiguous copy)."""
    if tensor is None:
        return None
    tensor = tensor.detach()
    if not tensor.is_contiguous():
        tensor = tensor.contiguous()
    if tensor.device.type == "cpu":
        return tensor.numpy()
    import cupy

    return cupy.from_dlpack(tensor)


def _tensor(array) -> Tensor:
    """fastcnn's output as a tensor sharing its memory."""
    return torch.from_numpy(array) if isinstance(array, np.ndarray) else torch.from_dlpack(array)


def _run(function: Callable, like: Tensor, *args, backend: str | None, **kwargs):
    """``function`` of fastcnn on ``like``'s device: the tensors among the arguments go in
    as arrays and the arrays it returns come back as tensors (a ``None`` as an empty
    placeholder), all without copies; CUDA work runs on PyTorch's current stream."""
    backend = backend_for(like.device.type, backend)
    with _stream(like):
        args = [_array(value) if isinstance(value, Tensor) else value for value in args]
        for name, value in kwargs.items():
            if isinstance(value, Tensor):
                kwargs[name] = _array(value)
        result = function(*args, backend=backend, **kwargs)
        if isinstance(result, tuple):
            return tuple(_nothing(like) if item is None else _tensor(item) for item in result)
        return _tensor(result)


_ON_THE_CPU = contextlib.nullcontext()


def _stream(like: Tensor):
    """Where CuPy runs while fastcnn reads and writes ``like``'s tensors: nothing to set on
    the CPU; on a CUDA device, PyTorch's current stream (so the DLPack exchanges and the
    kernels are ordered with PyTorch's work, and nothing waits for the host)."""
    if like.device.type != "cuda":
        return _ON_THE_CPU
    return _torch_stream(like.device)


@contextlib.contextmanager
def _torch_stream(device: torch.device):
    import cupy

    stream = torch.cuda.current_stream(device)
    with (
        cupy.cuda.Device(device.index),
        cupy.cuda.ExternalStream(stream.cuda_stream, device.index),
    ):
        yield


def _nothing(like: Tensor) -> Tensor:
    """The placeholder of a gradient not asked for (custom ops return tensors only)."""
    return like.new_empty(0)


# ---------------------------------------------------------------------------- shape rules
# PyTorch's output sizes, written with operations that SymInts support.


def _conv_size(size, kernel: int, stride: int, pad: int, dilation: int, same: bool):
    if same:  # fastcnn's "same": ceil(size / stride)
        return (size + stride - 1) // stride
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def _pool_size(size, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool):
    numerator = size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    output = numerator // stride + 1
    if ceil_mode and (output - 1) * stride >= size + pad:
        output = output - 1
    return output


# ---------------------------------------------------------------------------- convolution


@torch.library.custom_op("fastcnn::conv2d", mutates_args=())
def _conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    same: bool,
    algo: str,
    input_gradient_algo: str,
    weight_gradient_algo: str,
    backend: str | None,
) -> Tensor:
    y = _run(
        F.conv2d,
        x,
        x,
        weight,
        bias,
        stride,
        "same" if same else padding,
        dilation,
        groups,
        algo=algo,
        backend=backend,
    )
    return y


@_conv2d.register_fake
def _(x, weight, bias, stride, padding, dilation, groups, same, algo, input_algo, weight_algo,
      backend):  # fmt: skip
    N, _, H, W = x.shape
    K, _, R, S = weight.shape
    P = _conv_size(H, R, stride[0], padding[0], dilation[0], same)
    Q = _conv_size(W, S, stride[1], padding[1], dilation[1], same)
    return x.new_empty((N, K, P, Q))


@torch.library.custom_op("fastcnn::conv2d_backward", mutates_args=())
def _conv2d_backward(
    grad_y: Tensor,
    x: Tensor,
    weight: Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    same: bool,
    bias: bool,
    input_grad: bool,
    input_gradient_algo: str,
    weight_gradient_algo: str,
    backend: str | None,
) -> tuple[Tensor, Tensor, Tensor]:
    grads = _run(
        F.conv2d_backward,
        x,
        grad_y,
        x,
        weight,
        stride,
        "same" if same else padding,
        dilation,
        groups,
        bias=bias,
        input_grad=input_grad,
        algo=(input_gradient_algo, weight_gradient_algo),
        backend=backend,
    )
    return grads


@_conv2d_backward.register_fake
def _(grad_y, x, weight, stride, padding, dilation, groups, same, bias, input_grad, input_algo,
      weight_algo, backend):  # fmt: skip
    grad_x = x.new_empty(x.shape) if input_grad else _nothing(x)
    grad_bias = weight.new_empty((weight.shape[0],)) if bias else _nothing(x)
    return grad_x, weight.new_empty(weight.shape), grad_bias


def _conv2d_setup(ctx, inputs, output) -> None:
    x, weight, bias, stride, padding, dilation, groups, same, _, *algos, backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.geometry = (stride, padding, dilation, groups, same)
    ctx.has_bias, ctx.algos, ctx.backend = bias is not None, algos, backend


def _conv2d_gradients(ctx, grad_y):
    x, weight = ctx.saved_tensors
    need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
    grad_x, grad_weight, grad_bias = torch.ops.fastcnn.conv2d_backward(
        grad_y, x, weight, *ctx.geometry, ctx.has_bias and need_bias, need_x, *ctx.algos,
        ctx.backend,
    )  # fmt: skip
    return (
        grad_x if need_x else None,
        grad_weight if need_weight else None,
        grad_bias if need_bias and ctx.has_bias else None,
        *[None] * 9,
    )


_conv2d.register_autograd(_conv2d_gradients, setup_context=_conv2d_setup)


def _unbatched(function: Callable) -> Callable:
    """The ops take (N, C, H, W); a 3-D (C, H, W) input gets a batch axis of one going
    in and loses it coming out, as PyTorch's functions take it."""

    @functools.wraps(function)
    def wrapper(x: Tensor, *args, **kwargs):
        if x.dim() != 3:
            return function(x, *args, **kwargs)
        result = function(x.unsqueeze(0), *args, **kwargs)
        if isinstance(result, tuple):
            return tuple(item.squeeze(0) for item in result)
        return result.squeeze(0)

    return wrapper


def _pair(name: str, value, minimum: int) -> list[int]:
    return list(_shapes.pair(name, value, minimum=minimum))


@_unbatched
def conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    *,
    algo: str = "auto",
    backward_algo: str | tuple[str, str] = "auto",
    backend: str | None = None,
) -> Tensor:
    """``torch.nn.functional.conv2d`` on fastcnn's kernels (op ``fastcnn::conv2d``).

    Parameters
    ----------
    x, weight, bias, stride, padding, dilation, groups : as PyTorch's (``padding="same"``
        also for stride > 1, TensorFlow's rule, as :func:`fastcnn.functional.conv2d`)
    algo : the forward's algorithm (see :func:`fastcnn.functional.conv2d`)
    backward_algo : the gradients' algorithm, or a pair (input gradient, weight gradient)
    backend : a fastcnn backend that runs where the tensors are, or None (see
        :func:`backend_for`)

    Examples
    --------
    >>> conv2d(torch.ones(1, 2, 5, 5), torch.ones(3, 2, 3, 3), padding="same").shape
    torch.Size([1, 3, 5, 5])
    """
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f'padding must be an int, a pair, "valid" or "same", got {padding!r}')
        same, padding = padding == "same", 0
    else:
        same = False
    if isinstance(backward_algo, str):
        backward_algo = (backward_algo, backward_algo)
    return torch.ops.fastcnn.conv2d(
        x,
        weight,
        bias,
        _pair("stride", stride, 1),
        _pair("padding", padding, 0),
        _pair("dilation", dilation, 1),
        _shapes.positive_int("groups", groups),
        same,
        algo,
        *backward_algo,
        backend,
    )


# ---------------------------------------------------------------------------- pooling


@torch.library.custom_op("fastcnn::max_pool2d", mutates_args=())
def _max_pool2d(
    x: Tensor,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    ceil_mode: bool,
    backend: str | None,
) -> tuple[Tensor, Tensor]:
    y, indices = _run(
        F.max_pool2d,
        x,
        x,
        kernel_size,
        stride,
        padding,
        dilation,
        ceil_mode,
        return_indices=True,
        backend=backend,
    )
    return y, indices


def _pooled_shape(x, kernel_size, stride, padding, dilation, ceil_mode) -> tuple:
    N, C, H, W = x.shape
    P = _pool_size(H, kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode)
    Q = _pool_size(W, kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode)
    return (N, C, P, Q)


@_max_pool2d.register_fake
def _(x, kernel_size, stride, padding, dilation, ceil_mode, backend):
    shape = _pooled_shape(x, kernel_size, stride, padding, dilation, ceil_mode)
    return x.new_empty(shape), x.new_empty(shape, dtype=torch.int64)


@torch.library.custom_op("fastcnn::max_pool2d_backward", mutates_args=())
def _max_pool2d_backward(
    grad_y: Tensor,
    x: Tensor,
    indices: Tensor,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    ceil_mode: bool,
    backend: str | None,
) -> Tensor:
    grad_x = _run(
        F.max_pool2d_backward,
        x,
        grad_y,
        x,
        kernel_size,
        stride,
        padding,
        dilation,
        ceil_mode,
        indices=indices,
        backend=backend,
    )
    return grad_x


@_max_pool2d_backward.register_fake
def _(grad_y, x, indices, kernel_size, stride, padding, dilation, ceil_mode, backend):
    return x.new_empty(x.shape)


def _max_pool2d_setup(ctx, inputs, output) -> None:
    x, *geometry, backend = inputs
    ctx.save_for_backward(x, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.geometry, ctx.backend = geometry, backend


def _max_pool2d_gradients(ctx, grad_y, grad_indices):
    x, indices = ctx.saved_tensors
    grad_x = torch.ops.fastcnn.max_pool2d_backward(grad_y, x, indices, *ctx.geometry, ctx.backend)
    return grad_x, None, None, None, None, None, None


_max_pool2d.register_autograd(_max_pool2d_gradients, setup_context=_max_pool2d_setup)


def _window(kernel_size, stride, padding) -> tuple[list[int], list[int], list[int]]:
    kernel = _pair("kernel_size", kernel_size, 1)
    empty = stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0)
    return kernel, kernel if empty else _pair("stride", stride, 1), _pair("padding", padding, 0)


@_unbatched
def max_pool2d(
    x: Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
    *,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """``torch.nn.functional.max_pool2d`` on fastcnn's kernels (op ``fastcnn::max_pool2d``).

    Parameters
    ----------
    x, kernel_size, stride, padding, dilation, ceil_mode : as PyTorch's
    return_indices : bool, also return the positions of the maxima, as PyTorch's
    backend : a fastcnn backend, or None (see :func:`backend_for`)
    """
    kernel, stride, padding = _window(kernel_size, stride, padding)
    y, indices = torch.ops.fastcnn.max_pool2d(
        x, kernel, stride, padding, _pair("dilation", dilation, 1), ceil_mode, backend
    )
    return (y, indices) if return_indices else y


@torch.library.custom_op("fastcnn::avg_pool2d", mutates_args=())
def _avg_pool2d(
    x: Tensor,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
    backend: str | None,
) -> Tensor:
    y = _run(
        F.avg_pool2d,
        x,
        x,
        kernel_size,
        stride,
        padding,
        ceil_mode,
        count_include_pad,
        divisor_override,
        backend=backend,
    )
    return y


@_avg_pool2d.register_fake
def _(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, backend):
    return x.new_empty(_pooled_shape(x, kernel_size, stride, padding, (1, 1), ceil_mode))


@torch.library.custom_op("fastcnn::avg_pool2d_backward", mutates_args=())
def _avg_pool2d_backward(
    grad_y: Tensor,
    x: Tensor,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
    backend: str | None,
) -> Tensor:
    grad_x = _run(
        F.avg_pool2d_backward,
        x,
        grad_y,
        x,
        kernel_size,
        stride,
        padding,
        ceil_mode,
        count_include_pad,
        divisor_override,
        backend=backend,
    )
    return grad_x


@_avg_pool2d_backward.register_fake
def _(grad_y, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
      backend):  # fmt: skip
    return x.new_empty(x.shape)


def _avg_pool2d_setup(ctx, inputs, output) -> None:
    x, *geometry, backend = inputs
    ctx.save_for_backward(x)  # its shape and dtype; the kernel reads only grad_y
    ctx.geometry, ctx.backend = geometry, backend


def _avg_pool2d_gradients(ctx, grad_y):
    (x,) = ctx.saved_tensors
    grad_x = torch.ops.fastcnn.avg_pool2d_backward(grad_y, x, *ctx.geometry, ctx.backend)
    return grad_x, None, None, None, None, None, None, None


_avg_pool2d.register_autograd(_avg_pool2d_gradients, setup_context=_avg_pool2d_setup)


@_unbatched
def avg_pool2d(
    x: Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
    *,
    backend: str | None = None,
) -> Tensor:
    """``torch.nn.functional.avg_pool2d`` on fastcnn's kernels (op ``fastcnn::avg_pool2d``).

    Parameters
    ----------
    x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override : as
        PyTorch's
    backend : a fastcnn backend, or None (see :func:`backend_for`)
    """
    kernel, stride, padding = _window(kernel_size, stride, padding)
    return torch.ops.fastcnn.avg_pool2d(
        x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override, backend
    )


# ---------------------------------------------------------------------------- activations


def _register_activation(name: str, saved: str, scalars: str = "") -> None:
    """Ops ``fastcnn::<name>`` and ``fastcnn::<name>_backward`` over fastcnn's elementwise
    kernels; the backward reads ``saved``, the forward's input ``"x"`` or output ``"y"``.
    ``scalars``: the schema of the op's scalar arguments, after x."""
    forward, backward = getattr(F, name), getattr(F, f"{name}_backward")

    def run_forward(x, *arguments):
        *values, backend = arguments
        return _run(forward, x, x, *values, backend=backend)

    def run_backward(grad_y, kept, *arguments):
        *values, backend = arguments
        return _run(backward, kept, grad_y, kept, *values, backend=backend)

    def fake(x, *arguments):
        return x.new_empty(x.shape)

    def fake_backward(grad_y, kept, *arguments):
        return kept.new_empty(kept.shape)

    def setup(ctx, inputs, output) -> None:
        x, *arguments = inputs
        ctx.save_for_backward(x if saved == "x" else output)
        ctx.arguments = arguments

    def gradients(ctx, grad_y):
        (kept,) = ctx.saved_tensors
        grad_x = getattr(torch.ops.fastcnn, f"{name}_backward")(grad_y, kept, *ctx.arguments)
        return grad_x, *[None] * len(ctx.arguments)

    op = torch.library.custom_op(
        f"fastcnn::{name}",
        run_forward,
        mutates_args=(),
        schema=f"(Tensor x, {scalars}str? backend) -> Tensor",
    )
    op.register_fake(fake)
    op.register_autograd(gradients, setup_context=setup)
    backward_op = torch.library.custom_op(
        f"fastcnn::{name}_backward",
        run_backward,
        mutates_args=(),
        schema=f"(Tensor grad_y, Tensor {saved}, {scalars}str? backend) -> Tensor",
    )
    backward_op.register_fake(fake_backward)


# relu's backward reads its output (the input's sign); leaky_relu's its input (a negative
# slope flips the sign); sigmoid's and tanh's their output (the derivative's formula).
_register_activation("relu", "y")
_register_activation("leaky_relu", "x", "float negative_slope, ")
_register_activation("sigmoid", "y")
_register_activation("tanh", "y")


def relu(x: Tensor, inplace: bool = False, *, backend: str | None = None) -> Tensor:
    """``torch.relu`` on fastcnn's kernel (op ``fastcnn::relu``).

    Parameters
    ----------
    x : tensor
    inplace : taken for PyTorch's signature; the result is always a new tensor (a
        custom op's output does not alias its input)
    backend : a fastcnn backend, or None (see :func:`backend_for`)
    """
    return torch.ops.fastcnn.relu(x, backend)


def leaky_relu(
    x: Tensor, negative_slope: float = 0.01, inplace: bool = False, *, backend: str | None = None
) -> Tensor:
    """``torch.nn.functional.leaky_relu`` on fastcnn's kernel (op ``fastcnn::leaky_relu``).

    Parameters
    ----------
    x, negative_slope : as PyTorch's
    inplace, backend : as :func:`relu`
    """
    return torch.ops.fastcnn.leaky_relu(x, _shapes.real("negative_slope", negative_slope), backend)


def sigmoid(x: Tensor, *, backend: str | None = None) -> Tensor:
    """``torch.sigmoid`` on fastcnn's kernel (op ``fastcnn::sigmoid``); x a tensor,
    backend as :func:`relu`."""
    return torch.ops.fastcnn.sigmoid(x, backend)


def tanh(x: Tensor, *, backend: str | None = None) -> Tensor:
    """``torch.tanh`` on fastcnn's kernel (op ``fastcnn::tanh``); x a tensor, backend as
    :func:`relu`."""
    return torch.ops.fastcnn.tanh(x, backend)


# ---------------------------------------------------------------------------- linear


@torch.library.custom_op("fastcnn::linear", mutates_args=())
def _linear(x: Tensor, weight: Tensor, bias: Tensor | None, backend: str | None) -> Tensor:
    return _run(F.linear, x, x, weight, bias, backend=backend)


@_linear.register_fake
def _(x, weight, bias, backend):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op("fastcnn::linear_backward", mutates_args=())
def _linear_backward(
    grad_y: Tensor, x: Tensor, weight: Tensor, bias: bool, input_grad: bool, backend: str | None
) -> tuple[Tensor, Tensor, Tensor]:
    grads = _run(
        F.linear_backward,
        x,
        grad_y,
        x,
        weight,
        bias=bias,
        input_grad=input_grad,
        backend=backend,
    )
    return grads


@_linear_backward.register_fake
def _(grad_y, x, weight, bias, input_grad, backend):
    grad_x = x.new_empty(x.shape) if input_grad else _nothing(x)
    grad_bias = weight.new_empty((weight.shape[0],)) if bias else _nothing(x)
    return grad_x, weight.new_empty(weight.shape), grad_bias


def _linear_setup(ctx, inputs, output) -> None:
    x, weight, bias, backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias, ctx.backend = bias is not None, backend


def _linear_gradients(ctx, grad_y):
    x, weight = ctx.saved_tensors
    need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
    grad_x, grad_weight, grad_bias = torch.ops.fastcnn.linear_backward(
        grad_y, x, weight, ctx.has_bias and need_bias, need_x, ctx.backend
    )
    return (
        grad_x if need_x else None,
        grad_weight if need_weight else None,
        grad_bias if need_bias and ctx.has_bias else None,
        None,
    )


_linear.register_autograd(_linear_gradients, setup_context=_linear_setup)


def linear(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, *, backend: str | None = None
) -> Tensor:
    """``torch.nn.functional.linear`` on fastcnn's kernels (op ``fastcnn::linear``):
    ``x @ weight.T + bias`` over x's last axis.

    Parameters
    ----------
    x, weight, bias : as PyTorch's
    backend : a fastcnn backend, or None (see :func:`backend_for`)
    """
    return torch.ops.fastcnn.linear(x, weight, bias, backend)


# ---------------------------------------------------------------------------- batch norm
# Custom ops with autograd must be functional, so the op returns the batch statistics and
# batch_norm() below updates the running statistics with PyTorch's in-place ops.


@torch.library.custom_op("fastcnn::batch_norm", mutates_args=())
def _batch_norm(
    x: Tensor,
    mean: Tensor | None,
    var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    eps: float,
    backend: str | None,
) -> tuple[Tensor, Tensor, Tensor]:
    if training:  # normalised by the batch's statistics, which come back for the update
        y, batch_mean, batch_var = _run(
            F.batch_norm, x, x, None, None, weight, bias, True,
            eps=eps, return_stats=True, backend=backend,
        )  # fmt: skip
        return y, batch_mean, batch_var
    y = _run(
        F.batch_norm, x, x, mean, var, weight, bias,
        False, eps=eps, backend=backend,
    )  # fmt: skip
    return y, _nothing(x), _nothing(x)


@_batch_norm.register_fake
def _(x, mean, var, weight, bias, training, eps, backend):
    channels = (x.shape[1],) if training else (0,)
    return x.new_empty(x.shape), x.new_empty(channels), x.new_empty(channels)


@torch.library.custom_op("fastcnn::batch_norm_backward", mutates_args=())
def _batch_norm_backward(
    grad_y: Tensor,
    x: Tensor,
    mean: Tensor | None,
    var: Tensor | None,
    weight: Tensor | None,
    training: bool,
    eps: float,
    input_grad: bool,
    backend: str | None,
) -> tuple[Tensor, Tensor, Tensor]:
    grads = _run(
        F.batch_norm_backward, x, grad_y, x, mean, var,
        weight, training, eps, input_grad=input_grad, backend=backend,
    )  # fmt: skip
    return grads


@_batch_norm_backward.register_fake
def _(grad_y, x, mean, var, weight, training, eps, input_grad, backend):
    grad_x = x.new_empty(x.shape) if input_grad else _nothing(x)
    if weight is None:
        return grad_x, _nothing(x), _nothing(x)
    return grad_x, weight.new_empty(weight.shape), weight.new_empty(weight.shape)


def _batch_norm_setup(ctx, inputs, output) -> None:
    x, mean, var, weight, _, training, eps, backend = inputs
    # In training the backward recomputes the batch's statistics from x.
    ctx.save_for_backward(x, None if training else mean, None if training else var, weight)
    ctx.training, ctx.eps, ctx.backend = training, eps, backend


def _batch_norm_gradients(ctx, grad_y, grad_mean, grad_var):
    x, mean, var, weight = ctx.saved_tensors
    need_x, _, _, need_weight, need_bias = ctx.needs_input_grad[:5]
    grad_x, grad_weight, grad_bias = torch.ops.fastcnn.batch_norm_backward(
        grad_y, x, mean, var, weight, ctx.training, ctx.eps, need_x, ctx.backend
    )
    affine = weight is not None
    return (
        grad_x if need_x else None,
        None,
        None,
        grad_weight if need_weight and affine else None,
        grad_bias if need_bias and affine else None,
        None,
        None,
        None,
    )


_batch_norm.register_autograd(_batch_norm_gradients, setup_context=_batch_norm_setup)


def batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    backend: str | None = None,
) -> Tensor:
    """``torch.nn.functional.batch_norm`` on fastcnn's kernels (op ``fastcnn::batch_norm``).

    Parameters
    ----------
    x, running_mean, running_var, weight, bias, training, momentum, eps : as PyTorch's;
        in training the running statistics given are updated in place (PyTorch's rule,
        the batch variance unbiased), by PyTorch's ops on the statistics the op returns
    backend : a fastcnn backend, or None
    """
    if not training and (running_mean is None or running_var is None):
        raise ValueError("running_mean and running_var are needed when training=False")
    y, mean, var = torch.ops.fastcnn.batch_norm(
        x, running_mean, running_var, weight, bias, training, float(eps), backend
    )
    if training and (running_mean is not None or running_var is not None):
        count = x.numel() // x.shape[1]
        with torch.no_grad():
            if running_mean is not None:
                running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
            if running_var is not None:
                unbiased = var.detach() * (count / max(count - 1, 1))
                running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
    return y


# ---------------------------------------------------------------------------- cross-entropy


@torch.library.custom_op("fastcnn::cross_entropy", mutates_args=())
def _cross_entropy(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    backend: str | None,
) -> Tensor:
    loss = _run(
        F.cross_entropy, logits, logits, target, weight, ignore_index,
        reduction, label_smoothing, backend=backend,
    )  # fmt: skip
    return loss


@_cross_entropy.register_fake
def _(logits, target, weight, ignore_index, reduction, label_smoothing, backend):
    if reduction != "none":
        return logits.new_empty(())
    if target.dtype.is_floating_point:  # class probabilities: the logits' shape less C
        return logits.new_empty((*logits.shape[:1], *logits.shape[2:]))
    return logits.new_empty(target.shape)


@torch.library.custom_op("fastcnn::cross_entropy_backward", mutates_args=())
def _cross_entropy_backward(
    grad_output: Tensor,
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    backend: str | None,
) -> Tensor:
    grad = _run(
        F.cross_entropy_backward, logits, logits, target, weight,
        ignore_index, reduction, label_smoothing, grad_output=grad_output,
        backend=backend,
    )  # fmt: skip
    return grad


@_cross_entropy_backward.register_fake
def _(grad_output, logits, target, weight, ignore_index, reduction, label_smoothing, backend):
    return logits.new_empty(logits.shape)


def _cross_entropy_setup(ctx, inputs, output) -> None:
    logits, target, weight, *arguments = inputs
    ctx.save_for_backward(logits, target, weight)
    ctx.arguments = arguments


def _cross_entropy_gradients(ctx, grad_output):
    logits, target, weight = ctx.saved_tensors
    grad = torch.ops.fastcnn.cross_entropy_backward(
        grad_output, logits, target, weight, *ctx.arguments
    )
    return grad, None, None, None, None, None, None


_cross_entropy.register_autograd(_cross_entropy_gradients, setup_context=_cross_entropy_setup)


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    backend: str | None = None,
) -> Tensor:
    """``torch.nn.functional.cross_entropy`` on fastcnn's kernels (op
    ``fastcnn::cross_entropy``); the gradient flows to the logits only.

    Parameters
    ----------
    logits, target, weight, ignore_index, reduction, label_smoothing : as PyTorch's
        (class indices or class probabilities; see :func:`fastcnn.functional.cross_entropy`)
    backend : a fastcnn backend, or None
    """
    if target.requires_grad:
        raise ValueError(
            "target requires grad, and fastcnn's cross_entropy gives a gradient to the logits "
            "only: pass target.detach()"
        )
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f'reduction must be "mean", "sum" or "none", got {reduction!r}')
    return torch.ops.fastcnn.cross_entropy(
        logits, target, weight, ignore_index, reduction, float(label_smoothing), backend
    )
