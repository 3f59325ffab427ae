"""Layers with PyTorch's constructors and state_dict keys, and a hand-written backward pass.

There is no autograd: every layer keeps in ``forward`` what its ``backward`` needs
(its latest call only), and ``backward(grad)`` returns the gradient with respect to
the layer's input while adding (``+=``, as PyTorch) the gradients of its parameters
into ``Parameter.grad``. ``Sequential.backward`` runs its children in reverse.
Layers call :mod:`fastcnn.functional`, so the backend is whatever the dispatch picks
(``fastcnn.use_backend``, ``FASTCNN_BACKEND`` or the array type).

>>> import numpy as np, fastcnn
>>> from fastcnn import nn
>>> _ = fastcnn.manual_seed(0)
>>> model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
...                       nn.Flatten(), nn.Linear(4 * 4 * 4, 10))
>>> criterion = nn.CrossEntropyLoss()
>>> x = np.ones((2, 1, 8, 8), np.float32)
>>> loss = criterion(model(x), np.array([3, 7]))
>>> grad_x = model.backward(criterion.backward())
>>> [name for name, _ in model.named_parameters()]
['0.weight', '0.bias', '4.weight', '4.bias']
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import DTypeLike

from fastcnn import _shapes
from fastcnn import functional as F
from fastcnn._arrays import FLOAT_DTYPES, array_module
from fastcnn._random import generator
from fastcnn.backends import BACKENDS, BackendUnavailableError

__all__ = [
    "AvgPool2d",
    "BatchNorm2d",
    "Conv2d",
    "CrossEntropyLoss",
    "Dropout",
    "Flatten",
    "LeakyReLU",
    "Linear",
    "MaxPool2d",
    "Module",
    "Parameter",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Tanh",
]


# ---------------------------------------------------------------------------- parameters


class Parameter:
    """A trainable array: ``data`` (NumPy or CuPy) and its gradient ``grad``.

    ``grad`` is ``None`` until the first ``backward`` that reaches the parameter;
    later backward calls add to it, so call ``zero_grad()`` between steps.

    >>> p = Parameter(np.zeros(3, np.float32))
    >>> p.shape, p.grad is None
    ((3,), True)
    """

    __slots__ = ("_grad_storage", "data", "grad")

    def __init__(self, data) -> None:
        array_module(data=data)  # a NumPy or CuPy array, nothing else
        self.data = data
        self.grad = None
        self._grad_storage = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def accumulate_grad(self, grad, *, reused: bool = False) -> None:
        """Add ``grad`` to ``self.grad`` (which it becomes when ``self.grad`` is None).

        ``reused=True`` says ``grad`` is a buffer its layer will overwrite: it is then
        copied into storage this parameter keeps from step to step instead.
        """
        if self.grad is not None:
            self.grad += grad
        elif not reused:
            self.grad = grad
        else:
            storage = self._grad_storage
            if storage is None or storage.shape != grad.shape or type(storage) is not type(grad):
                storage = self._grad_storage = grad.copy()
            else:
                storage[...] = grad
            self.grad = storage

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


class LoadResult(NamedTuple):
    """What :meth:`Module.load_state_dict` could not match (always empty when strict)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


# ---------------------------------------------------------------------------- helpers


def _float_dtype(dtype: DTypeLike) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def _default_uniform(shape: tuple[int, ...], fan_in: int, dtype: np.dtype) -> Parameter:
    """uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default for weights and biases.

    For weights PyTorch calls kaiming_uniform_(a=sqrt(5)): bound = gain * sqrt(3 / fan_in)
    with gain = sqrt(2 / (1 + a**2)) = sqrt(1/3), which is the same 1/sqrt(fan_in).
    """
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    values = generator().uniform(-bound, bound, size=shape)
    return Parameter(values.astype(dtype))


def _cupy_for_device():
    """CuPy, when it is installed and finds a GPU; otherwise a clear error."""
    try:
        import cupy
    except ImportError as error:
        raise BackendUnavailableError(
            "to('cuda') needs CuPy: pip install 'fastcnn[cuda]' on a machine with an NVIDIA GPU"
        ) from error
    if not cupy.is_available():
        raise BackendUnavailableError("to('cuda'): CuPy is installed but finds no CUDA GPU")
    return cupy


def _as_array_like(value, like):
    """``value`` (NumPy, CuPy, or anything np.asarray takes) on ``like``'s device and dtype."""
    xp = array_module(like=like)
    if xp is np and not isinstance(value, np.ndarray) and hasattr(value, "get"):
        value = value.get()  # a CuPy array: copy it to the host
    return xp.asarray(value, dtype=like.dtype)


# ---------------------------------------------------------------------------- Module


class Module:
    """Base class of layers: registers parameters and children, and walks them.

    Assigning a :class:`Parameter` or a :class:`Module` to an attribute registers it,
    in assignment order, which fixes the order of ``named_parameters()`` and the keys
    of ``state_dict()`` (``"child.weight"``), as in PyTorch.

    Subclasses implement ``forward`` and ``backward``.

    >>> class Affine(Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.scale = Parameter(np.ones(1))
    ...     def forward(self, x):
    ...         self._saved = x
    ...         return x * self.scale.data
    ...     def backward(self, grad):
    ...         self.scale.accumulate_grad((grad * self._saved).sum(keepdims=True).reshape(1))
    ...         return grad * self.scale.data
    >>> layer = Affine()
    >>> layer(np.array([2.0])), layer.backward(np.array([1.0])), layer.scale.grad
    (array([2.]), array([1.]), array([2.]))
    """

    training: bool
    #: The backend the layer's kernels run on; None: chosen by the array type (see
    #: :func:`fastcnn.use_backend`). Set by the ``backend=`` of the layers that run kernels.
    backend: str | None = None

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        # What backward needs from the latest forward; None until the first forward.
        object.__setattr__(self, "_saved", None)
        # Outputs and gradients kept between calls; None unless reuse_buffers() is on.
        object.__setattr__(self, "_buffers", None)
        # Persistent state that is not a parameter (running statistics): in state_dict.
        object.__setattr__(self, "_state", OrderedDict())

    def __setattr__(self, name: str, value: Any) -> None:
        parameters = self.__dict__.get("_parameters")
        if parameters is None:
            if isinstance(value, (Parameter, Module)):
                raise AttributeError(
                    f"call super().__init__() in {type(self).__name__}.__init__ before "
                    f"assigning parameters or submodules"
                )
        else:
            # Replacing keeps the registration order; a plain value unregisters the name.
            if isinstance(value, Parameter):
                self._modules.pop(name, None)
                parameters[name] = value
            elif isinstance(value, Module):
                parameters.pop(name, None)
                self._modules[name] = value
            else:
                parameters.pop(name, None)
                self._modules.pop(name, None)
        object.__setattr__(self, name, value)

    def _set_backend(self, backend: str | None) -> None:
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"backend must be None or one of {BACKENDS}, got {backend!r}")
        self.backend = backend

    def register_state(self, name: str, array) -> None:
        """Keep ``array`` as the persistent state ``name`` (PyTorch's ``register_buffer``:
        in ``state_dict`` after the parameters, loaded and moved with them, no gradient).
        Update it in place so the attribute and the state stay one array."""
        self._state[name] = array
        object.__setattr__(self, name, array)

    # -- running

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, grad: Any) -> Any:
        """Gradient with respect to the latest forward's input; adds into ``Parameter.grad``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def reuse_buffers(self, enabled: bool = True) -> Module:
        """Keep each layer's outputs and gradients in buffers reused from call to call.

        A training loop then allocates no activation-sized array after its first step
        (fresh large arrays also page-fault on every touch). The price: an array a
        layer returns stays valid only until that layer's next call, so copy what you
        keep. Off by default; returns self.

        >>> model = Sequential(Linear(3, 2), ReLU()).reuse_buffers()
        >>> first = model(np.ones((4, 3), np.float32))
        >>> model(np.ones((4, 3), np.float32)) is first
        True
        """
        _shapes.flag("enabled", enabled)
        for module in self.modules():
            object.__setattr__(module, "_buffers", {} if enabled else None)
        return self

    def _buffer(self, key: str, shape: Callable[[], tuple[int, ...]], like, dtype=None):
        """The kept buffer ``key`` of ``shape()`` (computed only when needed), with
        ``like``'s array type and dtype (or ``dtype``), or None when reuse is off."""
        if self._buffers is None:
            return None
        dtype = like.dtype if dtype is None else np.dtype(dtype)
        wanted = tuple(shape())
        buffer = self._buffers.get(key)
        if (
            buffer is None
            or buffer.shape != wanted
            or buffer.dtype != dtype
            or type(buffer) is not type(like)
        ):
            buffer = self._buffers[key] = array_module(like=like).empty(wanted, dtype)
        return buffer

    def _accumulate(self, parameter: Parameter | None, grad) -> None:
        if parameter is not None:
            parameter.accumulate_grad(grad, reused=self._buffers is not None)

    def _saved_for_backward(self) -> Any:
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return self._saved

    # -- walking the tree

    def children(self) -> Iterator[Module]:
        """The direct submodules, in registration order."""
        yield from self._modules.values()

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module and every descendant, depth first, with dotted names."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, module in self.named_modules():
            yield module

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """``(dotted name, Parameter)`` pairs: each module's own first, then its children's.

        A parameter shared by two layers is listed once, as in PyTorch.

        >>> [name for name, _ in Sequential(Linear(2, 3), ReLU(), Linear(3, 1)).named_parameters()]
        ['0.weight', '0.bias', '2.weight', '2.bias']
        """
        seen: set[int] = set()
        for module_name, module in self.named_modules(prefix):
            for name, parameter in module._parameters.items():
                if id(parameter) in seen:
                    continue
                seen.add(id(parameter))
                yield (f"{module_name}.{name}" if module_name else name), parameter

    def parameters(self) -> Iterator[Parameter]:
        for _, parameter in self.named_parameters():
            yield parameter

    # -- modes and gradients

    def train(self, mode: bool = True) -> Module:
        """Set training mode on this module and its descendants; returns self.

        No layer here behaves differently in the two modes (there is no dropout or
        batch norm yet); the flag is kept so models read as they do in PyTorch.
        """
        _shapes.flag("mode", mode)
        for module in self.modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self) -> Module:
        """``train(False)``; returns self."""
        return self.train(False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients: to ``None`` (the default, as PyTorch 2), or to zeros in place.

        ``None`` frees the memory and lets the next backward write instead of add.
        """
        for parameter in self.parameters():
            if set_to_none:
                parameter.grad = None
            elif parameter.grad is not None:
                parameter.grad.fill(0)

    # -- state

    def state_dict(self) -> OrderedDict[str, Any]:
        """Copies of every parameter, keyed like PyTorch (``"0.weight"``, ``"0.bias"``, ...).

        The values are copies, so later training does not change a saved state.

        >>> list(Sequential(Linear(2, 3)).state_dict())
        ['0.weight', '0.bias']
        """
        return OrderedDict((key, array.copy()) for key, array in self._state_arrays().items())

    def _state_arrays(self) -> OrderedDict[str, Any]:
        """Every parameter's array and every persistent state, by state-dict key."""
        arrays: OrderedDict[str, Any] = OrderedDict()
        for module_name, module in self.named_modules():
            prefix = f"{module_name}." if module_name else ""
            for name, parameter in module._parameters.items():
                arrays[prefix + name] = parameter.data
            for name, array in module._state.items():
                arrays[prefix + name] = array
        return arrays

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> LoadResult:
        """Copy ``state_dict``'s values into the parameters, keeping their dtype and device.

        Values may be NumPy or CuPy arrays (a PyTorch state dict loads after
        ``{k: v.numpy() for k, v in sd.items()}``). As in PyTorch, missing or unexpected
        keys raise ``RuntimeError`` when ``strict`` (the default), a wrong shape always
        does, and one message lists every problem. Nothing changes when it raises.

        >>> model = Linear(2, 1)
        >>> model.load_state_dict({"weight": np.ones((1, 2)), "bias": np.zeros(1)})
        LoadResult(missing_keys=[], unexpected_keys=[])
        >>> model.weight.data
        array([[1., 1.]], dtype=float32)
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        own = self._state_arrays()
        missing = [key for key in own if key not in state_dict]
        unexpected = [key for key in state_dict if key not in own]
        problems = []
        if strict and missing:
            problems.append(f"missing keys {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys {unexpected}")
        problems += [
            f"wrong shape for {key!r}: the model has {own[key].shape}, "
            f"the state dict {tuple(np.shape(value))}"
            for key, value in state_dict.items()
            if key in own and tuple(np.shape(value)) != own[key].shape
        ]
        if problems:
            raise RuntimeError(
                f"cannot load the state dict into {type(self).__name__}: " + "; ".join(problems)
            )
        # Convert everything first, so a value that cannot be converted changes nothing.
        converted = {
            key: _as_array_like(state_dict[key], own[key]) for key in own if key in state_dict
        }
        for key, value in converted.items():
            own[key][...] = value
        return LoadResult(missing, unexpected)

    def to(self, device: str) -> Module:
        """Move parameters (and gradients) to ``"cpu"`` (NumPy) or ``"cuda"`` (CuPy); returns self.

        Raises ``BackendUnavailableError`` when CuPy or a GPU is missing. What forward
        saved for backward is dropped. Create optimizers after moving the model, since
        their state stays where it was created.
        """
        if device == "cuda":
            convert = _cupy_for_device().asarray
        elif device == "cpu":

            def convert(array):
                return array if isinstance(array, np.ndarray) else array.get()

        else:
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        for module in self.modules():
            object.__setattr__(module, "_saved", None)
        for parameter in self.parameters():
            parameter.data = convert(parameter.data)
            if parameter.grad is not None:
                parameter.grad = convert(parameter.grad)
        for module in self.modules():
            for name, array in list(module._state.items()):
                module.register_state(name, convert(array))
        return self

    # -- printing

    def extra_repr(self) -> str:
        return ""

    def describe(self) -> str:
        """A one-line name for error messages: the layer and its main arguments."""
        return type(self).__name__ if self._modules else repr(self)

    def __repr__(self) -> str:
        if not self._modules:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"{type(self).__name__}("]
        for name, child in self._modules.items():
            child_lines = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child_lines}")
        lines.append(")")
        return "\n".join(lines)


class Sequential(Module):
    """Children run in order; ``backward`` runs them in reverse. Children are named "0", "1", ...

    Parameters
    ----------
    modules : the layers, applied in order

    Examples
    --------
    >>> model = Sequential(Linear(3, 2), Tanh())
    >>> model(np.ones((4, 3), np.float32)).shape
    (4, 2)
    >>> model.backward(np.ones((4, 2), np.float32)).shape
    (4, 3)
    """

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], Mapping):
            named = list(modules[0].items())
        else:
            named = [(str(index), module) for index, module in enumerate(modules)]
        for name, module in named:
            if not isinstance(module, Module):
                raise TypeError(f"Sequential takes Modules, got {type(module).__name__}")
            setattr(self, name, module)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, index: int) -> Module:
        return list(self._modules.values())[index]

    def append(self, module: Module) -> Sequential:
        if not isinstance(module, Module):
            raise TypeError(f"Sequential takes Modules, got {type(module).__name__}")
        setattr(self, str(len(self)), module)
        return self

    def _step(self, name: str, module: Module, run, value):
        """``run(value)``; a ValueError or TypeError names the child that raised it."""
        try:
            return run(value)
        except (ValueError, TypeError) as error:
            if type(error) not in (ValueError, TypeError):
                raise
            raise type(error)(
                f"{type(self).__name__}[{name}] {module.describe()}: {error}"
            ) from error

    def forward(self, x):
        for name, module in self._modules.items():
            x = self._step(name, module, module, x)
        return x

    def backward(self, grad, *, input_grad: bool = True):
        """Runs the children's backward in reverse. With ``input_grad=False`` (the input
        needs no gradient, as a batch of images) the children before the first one with
        parameters are skipped and that one computes only its parameters' gradients
        (a :class:`Conv2d`, :class:`Linear` or :class:`Sequential`; another kind still
        computes its input gradient, which is dropped); returns None."""
        _shapes.flag("input_grad", input_grad, "whether to return the input's gradient")
        names, modules = list(self._modules), list(self._modules.values())
        first = 0
        if not input_grad:
            first = next((i for i, m in enumerate(modules) if any(m.parameters())), len(modules))
        for index in range(len(modules) - 1, first - 1, -1):
            module = modules[index]
            if index == first and not input_grad:
                if isinstance(module, (Conv2d, Linear, Sequential)):
                    run = lambda g, m=module: m.backward(g, input_grad=False)  # noqa: E731
                else:
                    run = module.backward
                self._step(names[index], module, run, grad)
                return None
            grad = self._step(names[index], module, module.backward, grad)
        return None if not input_grad else grad


# ------------------------------------------------------------------ layers with parameters


def _check_channels(x, channels: int, unbatched: bool) -> None:
    """An input of the wrong rank or channel count, said in the layer's terms, with a
    hint where it looks channels-last (NHWC)."""
    shape = getattr(x, "shape", None)
    ranks = (3, 4) if unbatched else (4,)
    if shape is None or len(shape) not in ranks:
        got = f"shape {tuple(shape)}" if shape is not None else type(x).__name__
        expected = "(N, C, H, W) or unbatched (C, H, W)" if unbatched else "4-d (N, C, H, W)"
        raise ValueError(f"input must be a {expected} array, got {got}")
    if shape[-3] != channels:
        hint = ""
        if shape[-1] == channels:
            order = "(0, 3, 1, 2)" if len(shape) == 4 else "(2, 0, 1)"
            hint = (
                f"; it looks channels-last ({'N, ' if len(shape) == 4 else ''}H, W, C): "
                f"fastcnn takes NCHW, x.transpose{order} converts it"
            )
        raise ValueError(f"input has {shape[-3]} channels, the layer expects {channels}{hint}")


def _algo(algo):
    """A Conv2d's ``algo``: one name for every direction, or a triple (forward, input
    gradient, weight gradient)."""
    if isinstance(algo, str):
        return algo, algo
    if isinstance(algo, (tuple, list)) and len(algo) == 3 and all(isinstance(a, str) for a in algo):
        return algo[0], (algo[1], algo[2])
    raise TypeError(
        f"algo must be a str or a triple (forward, input gradient, weight gradient) of str, "
        f"got {algo!r}"
    )


class Conv2d(Module):
    """2-D convolution over NCHW input, with PyTorch's arguments and parameter shapes.

    ``weight`` is (out_channels, in_channels / groups, kH, kW) and ``bias``
    (out_channels,), both uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) with
    fan_in = in_channels / groups * kH * kW, as PyTorch. ``padding`` may also be
    ``"same"`` or ``"valid"``; only ``padding_mode="zeros"`` is supported. Input is
    (N, C, H, W) or unbatched (C, H, W).

    ``algo`` names the convolution algorithm (see :func:`fastcnn.functional.conv2d`):
    one name for every direction, or a triple (forward, input gradient, weight
    gradient), e.g. ``("winograd", "auto", "direct")``. ``backend`` names the backend
    the layer runs on (default: chosen by the array type).

    Parameters
    ----------
    in_channels, out_channels : int, C and K
    kernel_size : int or pair of ints
    stride, dilation : int or pair of ints
    padding : int, pair of ints, ``"same"`` or ``"valid"``
    groups : int dividing both channel counts
    bias : bool, whether the layer has a bias
    padding_mode : ``"zeros"``
    dtype : float32 or float64, of the parameters
    algo : see above
    backend : the backend its kernels run on, or None (chosen by the array type)

    Examples
    --------
    >>> conv = Conv2d(3, 8, kernel_size=3, padding=1)
    >>> conv.weight.shape, conv(np.ones((2, 3, 5, 5), np.float32)).shape
    ((8, 3, 3, 3), (2, 8, 5, 5))
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        dtype: DTypeLike = np.float32,
        algo: str | tuple[str, str, str] = "auto",
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self._set_backend(backend)
        self.algo = algo
        self._forward_algo, self._backward_algo = _algo(algo)
        self.in_channels = _shapes.positive_int("in_channels", in_channels)
        self.out_channels = _shapes.positive_int("out_channels", out_channels)
        self.groups = _shapes.positive_int("groups", groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be "
                f"divisible by groups ({groups})"
            )
        self.kernel_size = _shapes.pair("kernel_size", kernel_size, minimum=1)
        self.stride = _shapes.pair("stride", stride, minimum=1)
        self.padding = (
            padding if isinstance(padding, str) else _shapes.pair("padding", padding, minimum=0)
        )
        self.dilation = _shapes.pair("dilation", dilation, minimum=1)
        if padding_mode != "zeros":
            raise NotImplementedError(f"padding_mode {padding_mode!r}: only 'zeros' is supported")
        self.padding_mode = padding_mode
        dtype = _float_dtype(dtype)
        fan_in = in_channels // groups * self.kernel_size[0] * self.kernel_size[1]
        self.weight = _default_uniform(
            (out_channels, in_channels // groups, *self.kernel_size), fan_in, dtype
        )
        self.bias = _default_uniform((out_channels,), fan_in, dtype) if bias else None

    def _geometry(self) -> tuple:
        return self.stride, self.padding, self.dilation, self.groups

    def _output_shape(self, x) -> tuple[int, ...]:
        batched = x.shape if x.ndim == 4 else (1, *x.shape)
        shape = _shapes.conv2d_geometry(batched, self.weight.shape, None, *self._geometry())
        return shape.output_shape if x.ndim == 4 else shape.output_shape[1:]

    def forward(self, x):
        _check_channels(x, self.in_channels, unbatched=True)
        self._saved = x
        bias = None if self.bias is None else self.bias.data
        out = self._buffer("y", lambda: self._output_shape(x), x)
        return F.conv2d(
            x, self.weight.data, bias, *self._geometry(), out=out, algo=self._forward_algo,
            backend=self.backend,
        )  # fmt: skip

    def backward(self, grad, *, input_grad: bool = True):
        """As :meth:`Module.backward`; ``input_grad=False`` computes only the parameters'
        gradients and returns None (the first layer of a network)."""
        x = self._saved_for_backward()
        out = _gradient_buffers(self, x, input_grad)
        grad_x, grad_weight, grad_bias = F.conv2d_backward(
            grad, x, self.weight.data, *self._geometry(), bias=self.bias is not None,
            input_grad=input_grad, out=out, algo=self._backward_algo, backend=self.backend,
        )  # fmt: skip
        self._accumulate(self.weight, grad_weight)
        self._accumulate(self.bias, grad_bias)
        return grad_x

    def describe(self) -> str:
        kernel = self.kernel_size[0] if len(set(self.kernel_size)) == 1 else self.kernel_size
        return f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={kernel})"

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, bias={self.bias is not None}, dtype={self.weight.dtype}"
            + _kernel_repr(self)
        )


class Linear(Module):
    """y = x @ weight.T + bias, weight (out_features, in_features), PyTorch's initialisation.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool, whether the layer has a bias
    dtype : float32 or float64, of the parameters
    backend : the backend its kernels run on, or None (chosen by the array type)

    Examples
    --------
    >>> Linear(4, 2)(np.ones((3, 4), np.float32)).shape
    (3, 2)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        dtype: DTypeLike = np.float32,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self._set_backend(backend)
        self.in_features = _shapes.positive_int("in_features", in_features)
        self.out_features = _shapes.positive_int("out_features", out_features)
        dtype = _float_dtype(dtype)
        self.weight = _default_uniform((out_features, in_features), in_features, dtype)
        self.bias = _default_uniform((out_features,), in_features, dtype) if bias else None

    def forward(self, x):
        shape = getattr(x, "shape", None)
        if shape is not None and (len(shape) == 0 or shape[-1] != self.in_features):
            last = shape[-1] if shape else None
            hint = "; flatten it first (nn.Flatten())" if len(shape) > 2 else ""
            raise ValueError(
                f"input has {last} features (shape {tuple(shape)}), the layer expects "
                f"{self.in_features}{hint}"
            )
        self._saved = x
        out = self._buffer("y", lambda: (*x.shape[:-1], self.out_features), x)
        bias = None if self.bias is None else self.bias.data
        return F.linear(x, self.weight.data, bias, out=out, backend=self.backend)

    def backward(self, grad, *, input_grad: bool = True):
        """As :meth:`Conv2d.backward`."""
        x = self._saved_for_backward()
        out = _gradient_buffers(self, x, input_grad)
        grad_x, grad_weight, grad_bias = F.linear_backward(
            grad, x, self.weight.data, bias=self.bias is not None, input_grad=input_grad, out=out,
            backend=self.backend,
        )  # fmt: skip
        self._accumulate(self.weight, grad_weight)
        self._accumulate(self.bias, grad_bias)
        return grad_x

    def describe(self) -> str:
        return f"Linear({self.in_features}, {self.out_features})"

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, dtype={self.weight.dtype}" + _kernel_repr(self)
        )


def _kernel_repr(layer: Module) -> str:
    """The non-default ``algo`` and ``backend`` of a layer, for its repr."""
    parts = ""
    if getattr(layer, "algo", "auto") != "auto":
        parts += f", algo={layer.algo!r}"
    if layer.backend is not None:
        parts += f", backend={layer.backend!r}"
    return parts


def _gradient_buffers(layer: Module, x, input_grad: bool) -> tuple | None:
    """Kept (grad_x, grad_weight, grad_bias) buffers of a layer with weight and bias."""
    if layer._buffers is None:
        return None
    bias = layer.bias
    return (
        layer._buffer("grad_x", lambda: x.shape, x) if input_grad else None,
        layer._buffer("grad_weight", lambda: layer.weight.shape, x),
        None if bias is None else layer._buffer("grad_bias", lambda: bias.shape, x),
    )


# ---------------------------------------------------------------------------- pooling


class MaxPool2d(Module):
    """2-D max pooling with PyTorch's arguments.

    Forward always records where each maximum is, so backward does not search again;
    with ``return_indices=True`` forward also returns those indices, as PyTorch.

    Parameters
    ----------
    kernel_size, stride, padding, dilation, ceil_mode : as
        :func:`fastcnn.functional.max_pool2d`
    return_indices : bool, also return the indices from forward
    backend : the backend its kernels run on, or None (chosen by the array type)

    Examples
    --------
    >>> MaxPool2d(2)(np.arange(16.0).reshape(1, 1, 4, 4))[0, 0]
    array([[ 5.,  7.],
           [13., 15.]])
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        return_indices: bool = False,
        ceil_mode: bool = False,
        *,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self._set_backend(backend)
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.return_indices = return_indices
        self.ceil_mode = ceil_mode

    def _geometry(self) -> tuple:
        return self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode

    def forward(self, x):
        out = None
        if self._buffers is not None:
            shape = _shapes.pool2d_geometry(x.shape, *self._geometry()).output_shape
            out = (
                self._buffer("y", lambda: shape, x),
                self._buffer("indices", lambda: shape, x, np.int64),
            )
        y, indices = F.max_pool2d(
            x, *self._geometry(), return_indices=True, out=out, backend=self.backend
        )
        self._saved = (x, indices)
        return (y, indices) if self.return_indices else y

    def backward(self, grad):
        x, indices = self._saved_for_backward()
        out = self._buffer("grad_x", lambda: x.shape, x)
        return F.max_pool2d_backward(
            grad, x, *self._geometry(), indices=indices, out=out, backend=self.backend
        )

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, ceil_mode={self.ceil_mode}"
        )


class AvgPool2d(Module):
    """2-D average pooling with PyTorch's arguments.

    Parameters
    ----------
    kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override : as
        :func:`fastcnn.functional.avg_pool2d`
    backend : the backend its kernels run on, or None (chosen by the array type)

    Examples
    --------
    >>> AvgPool2d(2)(np.ones((1, 1, 4, 4), np.float32)).shape
    (1, 1, 2, 2)
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
        *,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self._set_backend(backend)
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.ceil_mode = ceil_mode
        self.count_include_pad = count_include_pad
        self.divisor_override = divisor_override

    def _geometry(self) -> tuple:
        return (
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )

    def _output_shape(self, x) -> tuple[int, ...]:
        kernel_size, stride, padding, *modes = self._geometry()
        return _shapes.pool2d_geometry(
            x.shape, kernel_size, stride, padding, 1, *modes
        ).output_shape

    def forward(self, x):
        # Only the shape and dtype of x are needed later; keeping x itself costs nothing extra.
        self._saved = x
        out = self._buffer("y", lambda: self._output_shape(x), x)
        return F.avg_pool2d(x, *self._geometry(), out=out, backend=self.backend)

    def backward(self, grad):
        x = self._saved_for_backward()
        out = self._buffer("grad_x", lambda: x.shape, x)
        return F.avg_pool2d_backward(grad, x, *self._geometry(), out=out, backend=self.backend)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


# ---------------------------------------------------------------------------- activations


class ReLU(Module):
    """max(x, 0). Backward uses the output (y > 0 exactly where x > 0), so ``inplace`` is safe.

    Parameters
    ----------
    inplace : bool, overwrite the input
    backend : the backend its kernels run on, or None (chosen by the array type)

    Examples
    --------
    >>> ReLU()(np.array([-1.0, 2.0]))
    array([0., 2.])
    """

    def __init__(self, inplace: bool = False, *, backend: str | None = None) -> None:
        super().__init__()
        self._set_backend(backend)
        self.inplace = _shapes.flag("inplace", inplace)

    def forward(self, x):
        out = None if self.inplace else self._buffer("y", lambda: x.shape, x)
        y = F.relu(x, self.inplace, out=out, backend=self.backend)
        self._saved = y
        return y

    def backward(self, grad):
        y = self._saved_for_backward()
        out = self._buffer("grad_x", lambda: y.shape, y)
        return F.relu_backward(grad, y, out=out, backend=self.backend)

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


class LeakyReLU(Module):
    """x where x > 0, else negative_slope * x.

    With ``inplace=True`` backward reads the output, whose sign equals the input's
    only when negative_slope >= 0; a negative slope in place is therefore refused.

    Parameters
    ----------
    negative_slope : real number
    inplace : bool, overwrite the input (negative_slope >= 0 only)
    backend : the backend its kernels run on, or None (chosen by the array type)

    Examples
    --------
    >>> LeakyReLU(0.1)(np.array([-1.0, 2.0]))
    array([-0.1,  2. ])
    """

    def __init__(
        self, negative_slope: float = 0.01, inplace: bool = False, *, backend: str | None = None
    ) -> None:
        super().__init__()
        self._set_backend(backend)
        _shapes.flag("inplace", inplace)
        if inplace and negative_slope < 0:
            raise ValueError("LeakyReLU(inplace=True) needs negative_slope >= 0")
        self.negative_slope = negative_slope
        self.inplace = inplace

    def forward(self, x):
        out = None if self.inplace else self._buffer("y", lambda: x.shape, x)
        y = F.leaky_relu(x, self.negative_slope, self.inplace, out=out, backend=self.backend)
        self._saved = y if self.inplace else x
        return y

    def backward(self, grad):
        saved = self._saved_for_backward()
        out = self._buffer("grad_x", lambda: saved.shape, saved)
        return F.leaky_relu_backward(
            grad, saved, self.negative_slope, out=out, backend=self.backend
        )

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}" + (", inplace=True" if self.inplace else "")


class Sigmoid(Module):
    """1 / (1 + exp(-x)); backward uses the output.

    Parameters
    ----------
    backend : the backend its kernels run on, or None (chosen by the array type)

    Examples
    --------
    >>> Sigmoid()(np.array([0.0]))
    array([0.5])
    """

    def __init__(self, *, backend: str | None = None) -> None:
        super().__init__()
        self._set_backend(backend)

    def forward(self, x):
        out = self._buffer("y", lambda: x.shape, x)
        self._saved = F.sigmoid(x, out=out, backend=self.backend)
        return self._saved

    def backward(self, grad):
        y = self._saved_for_backward()
        out = self._buffer("grad_x", lambda: y.shape, y)
        return F.sigmoid_backward(grad, y, out=out, backend=self.backend)


class Tanh(Module):
    """Hyperbolic tangent; backward uses the output.

    Parameters
    ----------
    backend : the backend its kernels run on, or None (chosen by the array type)

    Examples
    --------
    >>> Tanh()(np.array([0.0]))
    array([0.])
    """

    def __init__(self, *, backend: str | None = None) -> None:
        super().__init__()
        self._set_backend(backend)

    def forward(self, x):
        out = self._buffer("y", lambda: x.shape, x)
        self._saved = F.tanh(x, out=out, backend=self.backend)
        return self._saved

    def backward(self, grad):
        y = self._saved_for_backward()
        out = self._buffer("grad_x", lambda: y.shape, y)
        return F.tanh_backward(grad, y, out=out, backend=self.backend)


# ---------------------------------------------------------------------------- reshaping


class BatchNorm2d(Module):
    """Batch normalisation over the channels of NCHW input, as ``torch.nn.BatchNorm2d``:
    the same arguments, ``state_dict`` keys (weight, bias, running_mean, running_var,
    num_batches_tracked) and momentum rule (``running = (1 - momentum) * running +
    momentum * batch``, the batch variance unbiased; ``momentum=None``: the cumulative
    average). Training mode normalises with the batch's statistics; eval mode with the
    running ones (when ``track_running_stats``).

    Parameters
    ----------
    num_features : int, C
    eps : positive real number added to the variance
    momentum : the running statistics' update factor, or None (cumulative average)
    affine : bool, whether the layer has weight and bias
    track_running_stats : bool, whether it keeps running statistics
    dtype : float32 or float64, of the parameters and statistics
    backend : the backend its kernels run on, or None (chosen by the array type)

    Examples
    --------
    >>> layer = BatchNorm2d(3)
    >>> y = layer(np.random.default_rng(0).standard_normal((4, 3, 5, 5)).astype(np.float32))
    >>> bool(abs(y.mean()) < 1e-6), layer.num_batches_tracked
    (True, array(1))
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        dtype: DTypeLike = np.float32,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self._set_backend(backend)
        self.num_features = _shapes.positive_int("num_features", num_features)
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
            raise ValueError(f"eps must be a positive real number, got {eps!r}")
        if momentum is not None and not (isinstance(momentum, (int, float)) and 0 <= momentum <= 1):
            raise ValueError(f"momentum must be None or lie in [0, 1], got {momentum!r}")
        self.eps, self.momentum = float(eps), momentum
        self.affine = _shapes.flag("affine", affine)
        self.track_running_stats = _shapes.flag("track_running_stats", track_running_stats)
        dtype = _float_dtype(dtype)
        C = self.num_features
        self.weight = Parameter(np.ones(C, dtype)) if affine else None
        self.bias = Parameter(np.zeros(C, dtype)) if affine else None
        if track_running_stats:
            self.register_state("running_mean", np.zeros(C, dtype))
            self.register_state("running_var", np.ones(C, dtype))
            self.register_state("num_batches_tracked", np.zeros((), np.int64))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def _batch_statistics(self) -> bool:
        return self.training or not self.track_running_stats

    def _statistics(self) -> dict:
        """The statistics arguments of the functional calls: in training the batch's
        statistics normalise and the running ones (if tracked) are updated."""
        return {
            "running_mean": self.running_mean,
            "running_var": self.running_var,
            "training": self._batch_statistics(),
        }

    def forward(self, x):
        _check_channels(x, self.num_features, unbatched=False)
        self._saved = x
        weight = None if self.weight is None else self.weight.data
        bias = None if self.bias is None else self.bias.data
        out = self._buffer("y", lambda: x.shape, x)
        momentum = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked[...] += 1
            momentum = self.momentum
            if momentum is None:  # the cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(
            x, weight=weight, bias=bias, **self._statistics(), momentum=momentum, eps=self.eps,
            out=out,
            backend=self.backend,
        )  # fmt: skip

    def backward(self, grad):
        x = self._saved_for_backward()
        weight = None if self.weight is None else self.weight.data
        out = None
        if self._buffers is not None:
            out = (
                self._buffer("grad_x", lambda: x.shape, x),
                None if weight is None else self._buffer("grad_weight", lambda: weight.shape, x),
                None if weight is None else self._buffer("grad_bias", lambda: weight.shape, x),
            )
        grad_x, grad_weight, grad_bias = F.batch_norm_backward(
            grad,
            x,
            weight=weight,
            **self._statistics(),
            eps=self.eps,
            out=out,
            backend=self.backend,
        )
        self._accumulate(self.weight, grad_weight)
        self._accumulate(self.bias, grad_bias)
        return grad_x

    def describe(self) -> str:
        return f"BatchNorm2d({self.num_features})"

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}"
        )


class Dropout(Module):
    """Zeroes each element with probability ``p`` in training mode and scales the rest
    by 1 / (1 - p); the identity in eval mode (``model.eval()``), as ``torch.nn.Dropout``.
    The masks come from fastcnn's generator (``fastcnn.manual_seed``).

    Parameters
    ----------
    p : real number in [0, 1], the probability of zeroing
    inplace : bool, overwrite the input
    backend : the backend its kernels run on, or None (chosen by the array type)

    Examples
    --------
    >>> layer = Dropout(0.5).eval()
    >>> layer(np.ones(3, np.float32))
    array([1., 1., 1.], dtype=float32)
    """

    def __init__(self, p: float = 0.5, inplace: bool = False, *, backend: str | None = None):
        super().__init__()
        self._set_backend(backend)
        F._dropout_scale(p)  # checks p
        self.p = float(p)
        self.inplace = _shapes.flag("inplace", inplace)
        self._mask = None

    def forward(self, x):
        if not self.training or self.p == 0:
            self._mask = None
            return x
        out = None if self.inplace else self._buffer("y", lambda: x.shape, x)
        y, self._mask = F.dropout(
            x, self.p, True, self.inplace, return_mask=True, out=out, backend=self.backend
        )
        return y

    def backward(self, grad):
        if self._mask is None:
            return grad
        out = self._buffer("grad_x", lambda: grad.shape, grad)
        return F.dropout_backward(grad, self._mask, self.p, out=out, backend=self.backend)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Flatten(Module):
    """Merge dims ``start_dim`` .. ``end_dim`` (inclusive) into one, as ``torch.nn.Flatten``.

    >>> Flatten()(np.ones((2, 3, 4, 5))).shape
    (2, 60)
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim = start_dim
        self.end_dim = end_dim

    def forward(self, x):
        array_module(x=x)
        start = _shapes.normalize_axis(self.start_dim, x.ndim)
        end = _shapes.normalize_axis(self.end_dim, x.ndim)
        if start > end:
            raise ValueError(
                f"Flatten: start_dim {self.start_dim} comes after end_dim "
                f"{self.end_dim} for a {x.ndim}-D input"
            )
        self._saved = x.shape
        merged = math.prod(x.shape[start : end + 1])
        return x.reshape(*x.shape[:start], merged, *x.shape[end + 1 :])

    def backward(self, grad):
        return grad.reshape(self._saved_for_backward())

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


# ---------------------------------------------------------------------------- loss


class CrossEntropyLoss(Module):
    """Softmax cross-entropy, ``loss = criterion(logits, target)``, as PyTorch's: class
    indices or class probabilities as the target, optional class ``weight`` (kept as
    state, as PyTorch's buffer), ``ignore_index``, ``reduction``, ``label_smoothing``
    (see :func:`fastcnn.functional.cross_entropy`).

    ``backward()`` returns the gradient of the loss with respect to the logits
    (``grad_output`` scales it; it defaults to 1, or to ones for ``reduction="none"``).

    Parameters
    ----------
    weight, ignore_index, reduction, label_smoothing : as
        :func:`fastcnn.functional.cross_entropy`
    backend : the backend its kernels run on, or None (chosen by the array type)

    Examples
    --------
    >>> criterion = CrossEntropyLoss()
    >>> float(criterion(np.zeros((2, 4)), np.array([0, 3])))  # log 4
    1.3862943611198906
    >>> criterion.backward()[0]
    array([-0.375,  0.125,  0.125,  0.125])
    """

    def __init__(
        self,
        weight=None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self._set_backend(backend)
        if isinstance(weight, str):
            raise TypeError(
                f"weight must be an array of class weights or None, got {weight!r} "
                "(pass reduction= by keyword)"
            )
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        _shapes.fraction("label_smoothing", label_smoothing)
        if not _shapes._is_int(ignore_index):
            raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
        if weight is not None:
            self.register_state("weight", weight)
        else:
            self.weight = None
        self.ignore_index, self.reduction = int(ignore_index), reduction
        self.label_smoothing = float(label_smoothing)

    def _arguments(self) -> dict:
        return {
            "weight": self.weight,
            "ignore_index": self.ignore_index,
            "reduction": self.reduction,
            "label_smoothing": self.label_smoothing,
            "backend": self.backend,
        }

    def forward(self, logits, target):
        loss = F.cross_entropy(logits, target, **self._arguments())
        self._saved = (logits, target)
        return loss

    def backward(self, grad_output=None):
        logits, target = self._saved_for_backward()
        out = self._buffer("grad_logits", lambda: logits.shape, logits)
        return F.cross_entropy_backward(
            logits, target, **self._arguments(), grad_output=grad_output, out=out
        )

    def extra_repr(self) -> str:
        parts = [f"reduction={self.reduction!r}"]
        if self.weight is not None:
            parts.append(f"weight=({self.weight.shape[0]},)")
        if self.ignore_index != -100:
            parts.append(f"ignore_index={self.ignore_index}")
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing}")
        return ", ".join(parts)
