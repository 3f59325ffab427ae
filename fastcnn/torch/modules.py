"""Modules mirroring ``torch.nn`` on fastcnn's kernels, and :func:`convert`.

Each class subclasses its ``torch.nn`` namesake: the same constructor arguments, the
same parameters and initialisation, the same ``state_dict`` keys; only ``forward``
changes, to fastcnn's custom ops (:mod:`fastcnn.torch.ops`). Each also takes
``backend=`` (a fastcnn backend that runs where the tensors are, or None: the fastest)
and the convolution ``algo=`` / ``backward_algo=``.

>>> import torch, fastcnn.torch as ft
>>> layer = ft.Conv2d(3, 8, 3, padding=1, backend="reference")
>>> list(layer.state_dict()) == list(torch.nn.Conv2d(3, 8, 3).state_dict())
True
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastcnn.backends import BACKENDS
from fastcnn.torch import ops

__all__ = [
    "AvgPool2d",
    "BatchNorm2d",
    "Conv2d",
    "CrossEntropyLoss",
    "LeakyReLU",
    "Linear",
    "MaxPool2d",
    "ReLU",
    "Sigmoid",
    "Tanh",
    "convert",
]


class _Backend:
    """The keyword-only ``backend=`` of every module here (stored, shown by ``repr``)."""

    backend: str | None = None

    def _fastcnn_repr(self) -> str:
        return "" if self.backend is None else f"backend={self.backend!r}"

    def extra_repr(self) -> str:
        parts = [super().extra_repr(), self._fastcnn_repr()]
        return ", ".join(part for part in parts if part)


class Conv2d(_Backend, torch.nn.Conv2d):
    """``torch.nn.Conv2d`` on ``fastcnn::conv2d``; ``padding_mode`` other than
    ``"zeros"`` pads with ``torch.nn.functional.pad`` first, as PyTorch does.

    Parameters
    ----------
    *args, **kwargs : ``torch.nn.Conv2d``'s
    algo, backward_algo : see :func:`fastcnn.torch.conv2d`
    backend : a fastcnn backend, or None
    """

    def __init__(self, *args, algo: str = "auto", backward_algo="auto", backend=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.algo, self.backward_algo, self.backend = algo, backward_algo, backend

    def _fastcnn_repr(self) -> str:
        parts = [super()._fastcnn_repr()]
        if self.algo != "auto":
            parts.append(f"algo={self.algo!r}")
        if self.backward_algo != "auto":
            parts.append(f"backward_algo={self.backward_algo!r}")
        return ", ".join(part for part in parts if part)

    def forward(self, input: Tensor) -> Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":
            input = torch.nn.functional.pad(
                input, self._reversed_padding_repeated_twice, mode=self.padding_mode
            )
            padding = 0
        return ops.conv2d(
            input, self.weight, self.bias, self.stride, padding, self.dilation, self.groups,
            algo=self.algo, backward_algo=self.backward_algo, backend=self.backend,
        )  # fmt: skip


class Linear(_Backend, torch.nn.Linear):
    """``torch.nn.Linear`` on ``fastcnn::linear``."""

    def __init__(self, *args, backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, input: Tensor) -> Tensor:
        return ops.linear(input, self.weight, self.bias, backend=self.backend)


class MaxPool2d(_Backend, torch.nn.MaxPool2d):
    """``torch.nn.MaxPool2d`` on ``fastcnn::max_pool2d``."""

    def __init__(self, *args, backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, input: Tensor):
        return ops.max_pool2d(
            input, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
            self.return_indices, backend=self.backend,
        )  # fmt: skip


class AvgPool2d(_Backend, torch.nn.AvgPool2d):
    """``torch.nn.AvgPool2d`` on ``fastcnn::avg_pool2d``."""

    def __init__(self, *args, backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, input: Tensor) -> Tensor:
        return ops.avg_pool2d(
            input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
            self.count_include_pad, self.divisor_override, backend=self.backend,
        )  # fmt: skip


class ReLU(_Backend, torch.nn.ReLU):
    """``torch.nn.ReLU`` on ``fastcnn::relu`` (``inplace`` is kept for the signature; the
    result is a new tensor)."""

    def __init__(self, *args, backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, input: Tensor) -> Tensor:
        return ops.relu(input, backend=self.backend)


class LeakyReLU(_Backend, torch.nn.LeakyReLU):
    """``torch.nn.LeakyReLU`` on ``fastcnn::leaky_relu`` (``inplace`` as :class:`ReLU`)."""

    def __init__(self, *args, backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, input: Tensor) -> Tensor:
        return ops.leaky_relu(input, self.negative_slope, backend=self.backend)


class Sigmoid(_Backend, torch.nn.Sigmoid):
    """``torch.nn.Sigmoid`` on ``fastcnn::sigmoid``."""

    def __init__(self, *, backend: str | None = None):
        super().__init__()
        self.backend = backend

    def forward(self, input: Tensor) -> Tensor:
        return ops.sigmoid(input, backend=self.backend)


class Tanh(_Backend, torch.nn.Tanh):
    """``torch.nn.Tanh`` on ``fastcnn::tanh``."""

    def __init__(self, *, backend: str | None = None):
        super().__init__()
        self.backend = backend

    def forward(self, input: Tensor) -> Tensor:
        return ops.tanh(input, backend=self.backend)


class BatchNorm2d(_Backend, torch.nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` on ``fastcnn::batch_norm``: the same running statistics,
    ``num_batches_tracked`` and ``momentum=None`` (a cumulative average) as PyTorch's."""

    def __init__(self, *args, backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        batch_statistics = self.training or (self.running_mean is None and self.running_var is None)
        keep = not self.training or self.track_running_stats
        return ops.batch_norm(
            input, self.running_mean if keep else None, self.running_var if keep else None,
            self.weight, self.bias, batch_statistics, factor, self.eps, backend=self.backend,
        )  # fmt: skip


class CrossEntropyLoss(_Backend, torch.nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` on ``fastcnn::cross_entropy``."""

    def __init__(self, *args, backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return ops.cross_entropy(
            input, target, self.weight, self.ignore_index, self.reduction, self.label_smoothing,
            backend=self.backend,
        )  # fmt: skip


#: The torch.nn class each fastcnn module replaces in :func:`convert`.
REPLACES: dict[type, type] = {
    torch.nn.Conv2d: Conv2d,
    torch.nn.Linear: Linear,
    torch.nn.MaxPool2d: MaxPool2d,
    torch.nn.AvgPool2d: AvgPool2d,
    torch.nn.ReLU: ReLU,
    torch.nn.LeakyReLU: LeakyReLU,
    torch.nn.Sigmoid: Sigmoid,
    torch.nn.Tanh: Tanh,
    torch.nn.BatchNorm2d: BatchNorm2d,
    torch.nn.CrossEntropyLoss: CrossEntropyLoss,
}


def _swap(module: torch.nn.Module, backend: str | None, algo: str) -> torch.nn.Module:
    replacement = REPLACES.get(type(module))  # exact types: a subclass may change forward
    if replacement is None:
        return module
    swapped = replacement.__new__(replacement)
    swapped.__dict__.update(module.__dict__)  # the same Parameter objects, buffers, hooks
    swapped.backend = backend
    if replacement is Conv2d:
        swapped.algo, swapped.backward_algo = algo, "auto"
    return swapped


def convert(
    model: torch.nn.Module, *, backend: str | None = None, algo: str = "auto"
) -> torch.nn.Module:
    """Swap the ``torch.nn`` layers of ``model`` that fastcnn has (Conv2d, Linear,
    MaxPool2d, AvgPool2d, ReLU, LeakyReLU, Sigmoid, Tanh, BatchNorm2d, CrossEntropyLoss;
    exact types, not subclasses)
    for fastcnn's, in place, and return the model (a new module when ``model`` is itself
    such a layer).

    The swapped layers keep the very ``Parameter`` objects, so the weights, their
    ``state_dict`` keys and an optimizer built before all carry on.

    Parameters
    ----------
    model : a ``torch.nn.Module``
    backend : the fastcnn backend of every swapped layer, or None (the fastest for the
        tensors' device)
    algo : the convolutions' forward algorithm

    Examples
    --------
    >>> import torch, fastcnn.torch
    >>> net = fastcnn.torch.convert(torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.Tanh()))
    >>> [type(layer).__name__ for layer in net], type(net[0]).__module__
    (['Linear', 'Tanh'], 'fastcnn.torch.modules')
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    for name, child in list(model.named_children()):
        setattr(model, name, convert(child, backend=backend, algo=algo))
    return _swap(model, backend, algo)
