"""The Numba CPU backend: every op, forward and backward, compiled with Numba.

Importing this package configures Numba once for fastcnn (a thread-safe threading
layer; an on-disk cache that falls back to a writable directory) and registers the
kernels of its modules. Numba's own environment variables always win.
"""

from __future__ import annotations

from fastcnn.backends.numba import _setup

_setup.configure()

from fastcnn.backends.numba import (  # noqa: E402  (after configure: kernels compile with it)
    activation,
    batch_norm,
    conv2d,
    linear,
    pool2d,
    softmax,
)

__all__ = ["activation", "batch_norm", "conv2d", "linear", "pool2d", "softmax"]
