"""The ``cpp`` backend: thin wrappers over the compiled extension ``fastcnn._cpp``.

The extension has one function per op and dtype (``relu_float32``, ``relu_float64``);
the wrappers here pick by dtype. The sources are in ``kernels/cpp``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

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


_relu = _by_dtype("relu")
_relu_backward = _by_dtype("relu_backward")


@register("relu", "cpp")
def relu(x, y):
    _relu[x.dtype](x, y)


@register("relu_backward", "cpp")
def relu_backward(grad_y, x, grad_x):
    _relu_backward[x.dtype](grad_y, x, grad_x)
