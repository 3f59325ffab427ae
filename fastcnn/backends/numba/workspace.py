"""Scratch arrays that kernels reuse from call to call, one set per calling thread.

A convolution needs workspaces (padded or phase-split input, packed weights, column
blocks, Winograd transforms, per-thread partial sums). Allocating them fresh on every
call costs page faults on every touch of a large buffer and makes a training loop
allocate on every step; keeping them per thread keeps concurrent calls from several
Python threads apart.
"""

from __future__ import annotations

import threading

import numpy as np

_local = threading.local()


def scratch(name: str, size: int, dtype, *, zeroed: bool = False) -> np.ndarray:
    """A 1-D array of ``size`` elements owned by the calling thread and kept for its next
    call with the same ``name`` and dtype; its contents are garbage unless ``zeroed``.

    The array stays valid until the same thread asks for ``name`` again, so a kernel
    must not hand it to its caller.
    """
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    key = (name, np.dtype(dtype))
    buffer = pool.get(key)
    if buffer is None or buffer.size < size:
        buffer = pool[key] = np.empty(size, dtype)
    view = buffer[:size]
    if zeroed:
        view.fill(0)
    return view


def release() -> None:
    """Free the calling thread's workspaces (they are made again on demand)."""
    _local.pool = {}
