"""Array checks shared by the functional API: array type, dtype, allocation.

NumPy in, NumPy out; CuPy in, CuPy out. Only float32 and float64 are accepted and
nothing is cast silently.
"""

from __future__ import annotations

import sys
import threading
from types import ModuleType

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_poison = threading.local()


def _cupy() -> ModuleType | None:
    """CuPy if it is already imported (a CuPy array implies it is)."""
    return sys.modules.get("cupy")


def array_module(**arrays) -> ModuleType:
    """NumPy or CuPy, whichever holds all the given arrays (``None`` values are skipped).

    Raises ``TypeError`` naming the argument that is not an array, or when NumPy and
    CuPy arrays are mixed in one call.
    """
    found: dict[str, str] = {}
    cupy = _cupy()
    for name, array in arrays.items():
        if array is None:
            continue
        if isinstance(array, np.ndarray):
            found[name] = "numpy"
        elif cupy is not None and isinstance(array, cupy.ndarray):
            found[name] = "cupy"
        else:
            if isinstance(array, (list, tuple)):
                what = f"a {type(array).__name__}"
            elif isinstance(array, (int, float, complex, np.generic)):
                what = f"a scalar ({type(array).__name__})"
            else:
                what = type(array).__name__
            raise TypeError(
                f"{name} must be an array (numpy.ndarray or cupy.ndarray), got {what}; "
                "np.asarray(...) makes one"
            )
    kinds = set(found.values())
    if len(kinds) > 1:
        listing = ", ".join(f"{name}: {kind}" for name, kind in found.items())
        raise TypeError(f"NumPy and CuPy arrays are mixed in one call ({listing})")
    return cupy if kinds == {"cupy"} else np


def float_dtype(**arrays) -> np.dtype:
    """The one floating dtype (float32 or float64) shared by the given arrays."""
    dtype = None
    first = None
    for name, array in arrays.items():
        if array is None:
            continue
        if array.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{name} must be float32 or float64, got {array.dtype} (fastcnn does not cast)"
            )
        if dtype is None:
            dtype, first = array.dtype, name
        elif array.dtype != dtype:
            raise TypeError(
                f"{name} has dtype {array.dtype} but {first} has {dtype}; they must match"
            )
    return dtype


def integer_indices(name: str, indices, bound: int, xp: ModuleType, lowest: int = 0):
    """Check integer indices (class labels, max-pool positions) in ``[lowest, bound)`` and
    return them as contiguous int64: a kernel may then index with them unchecked."""
    if indices.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array of indices, got {indices.dtype}")
    if indices.size:
        low, high = int(indices.min()), int(indices.max())
        if low < lowest or high >= bound:
            raise ValueError(
                f"{name} must lie in [{lowest}, {bound}), got values in [{low}, {high}]"
            )
    return xp.ascontiguousarray(indices, dtype=xp.int64)


def contiguous(xp: ModuleType, array):
    """A C-contiguous view, or a copy when the input is strided (the input is never modified)."""
    return None if array is None else xp.ascontiguousarray(array)


def empty(xp: ModuleType, shape, dtype):
    """A new output array; filled with NaN while :func:`poison_outputs` is active."""
    out = xp.empty(shape, dtype)
    if getattr(_poison, "active", False):
        out.fill(np.nan if np.dtype(dtype).kind == "f" else -7)
    return out


class poison_outputs:
    """Context manager (tests): every output this thread allocates starts as NaN,
    so an element a kernel forgets to write shows up in the comparison."""

    def __enter__(self) -> poison_outputs:
        self._previous = getattr(_poison, "active", False)
        _poison.active = True
        return self

    def __exit__(self, *exc) -> None:
        _poison.active = self._previous
