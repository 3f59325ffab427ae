"""Array checks shared by the functional API: array type, dtype, allocation, DLPack.

NumPy in, NumPy out; CuPy in, CuPy out. Only float32 and float64 are accepted and
nothing is cast silently. Any other array that speaks DLPack (``__dlpack__`` and
``__dlpack_device__``: PyTorch tensors, JAX arrays, ...) is imported without a copy
(:func:`accepts_dlpack`), runs on the backend its device implies, and comes back as the
caller's own type.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

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


# ---------------------------------------------------------------------------- DLPack

#: DLPack device types (``__dlpack_device__()[0]``) and where fastcnn runs them.
DLPACK_CPU = 1
DLPACK_CUDA = 2
DLPACK_CUDA_MANAGED = 13
_DEVICE_NAMES = {1: "cpu", 2: "cuda", 3: "cuda_host", 4: "opencl", 7: "vulkan", 8: "metal",
                 10: "rocm", 13: "cuda_managed", 14: "oneapi"}  # fmt: skip


@functools.cache
def _foreign_type(kind: type) -> bool:
    """Whether arrays of ``kind`` come from another library through DLPack (not NumPy's
    or CuPy's own arrays, which the ops take directly)."""
    if issubclass(kind, np.ndarray):
        return False
    cupy = _cupy()
    if cupy is not None and issubclass(kind, cupy.ndarray):
        return False
    return hasattr(kind, "__dlpack__") and hasattr(kind, "__dlpack_device__")


def _holds_foreign(value) -> bool:
    if isinstance(value, (tuple, list)):
        return any(_foreign_type(type(item)) for item in value)
    return _foreign_type(type(value))


def _type_name(value) -> str:
    kind = type(value)
    return f"{kind.__module__.split('.')[0]}.{kind.__qualname__}"


def _is_array(value) -> bool:
    return isinstance(value, np.ndarray) or hasattr(type(value), "__dlpack__")


def module_for_device(device: tuple[int, int], name: str = "x") -> ModuleType:
    """NumPy for a DLPack CPU device, CuPy for a CUDA one (``BackendUnavailableError``
    when CuPy is missing); ``TypeError`` naming ``name`` for any other device."""
    kind = int(device[0])
    if kind == DLPACK_CPU:
        return np
    if kind in (DLPACK_CUDA, DLPACK_CUDA_MANAGED):
        try:
            import cupy
        except ImportError as error:
            from fastcnn.backends import INSTALL_HINTS, BackendUnavailableError

            raise BackendUnavailableError(
                f"{name} lives on a CUDA device, which needs CuPy: {INSTALL_HINTS['cuda']}"
            ) from error
        return cupy
    where = _DEVICE_NAMES.get(kind, f"DLPack device type {kind}")
    raise TypeError(
        f"{name} lives on {where}; fastcnn runs on the CPU (NumPy) and on CUDA devices "
        "(CuPy): move it to one of them first"
    )


def _device(name: str, value) -> tuple[int, int]:
    """``value``'s DLPack device, after refusing a tensor that requires grad."""
    if getattr(value, "requires_grad", False):
        raise ValueError(
            f"{name} requires grad, and fastcnn.functional records no gradients (the result "
            "would be silently detached): use fastcnn.torch's ops, which have autograd, or "
            f"pass {name}.detach()"
        )
    try:
        return tuple(int(part) for part in value.__dlpack_device__())
    except (BufferError, TypeError, RuntimeError, ValueError) as error:
        raise TypeError(
            f"{name} ({_type_name(value)}) lives on a device fastcnn cannot run on ({error}); "
            "fastcnn runs on the CPU (NumPy) and on CUDA devices (CuPy)"
        ) from error


def _import(name: str, value, device: tuple[int, int]) -> Any:
    """``value`` as a NumPy or CuPy array sharing its memory."""
    xp = module_for_device(device, name)
    try:
        return xp.from_dlpack(value)
    except (BufferError, TypeError, RuntimeError, ValueError) as error:
        raise TypeError(
            f"{name} ({_type_name(value)}) cannot be imported through DLPack: {error}"
        ) from error


def _namespace(value) -> Any:
    """The array namespace of ``value``'s library: what gives a result back in its type."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return torch  # torch.Tensor has no __array_namespace__
    if hasattr(value, "__array_namespace__"):
        return value.__array_namespace__()
    try:
        import array_api_compat
    except ImportError as error:
        raise TypeError(
            f"fastcnn cannot give a result back as a {_type_name(value)} (it has no "
            "__array_namespace__): pip install array-api-compat"
        ) from error
    return array_api_compat.array_namespace(value)


def _call_foreign(function: Callable, positional: tuple[str, ...], args, kwargs):
    """Run ``function`` on DLPack imports of its array arguments; give back the caller's type.

    ``positional`` names the parameters that ``args`` fill, in order (every parameter of
    an op can also be passed by keyword, which is how ``function`` is called here)."""
    if len(args) > len(positional) or any(name in kwargs for name in positional[: len(args)]):
        return function(*args, **kwargs)  # let the op raise its own TypeError
    arguments = dict(zip(positional, args, strict=False))
    arguments.update(kwargs)
    found: dict[str, Any] = {}
    for name, value in arguments.items():
        if isinstance(value, (tuple, list)):
            found.update({f"{name}[{i}]": v for i, v in enumerate(value) if _is_array(v)})
        elif _is_array(value):
            found[name] = value
    kinds = {name: _type_name(value) for name, value in found.items()}
    if len(set(kinds.values())) > 1:
        listing = ", ".join(f"{name}: {kind}" for name, kind in kinds.items())
        raise TypeError(f"arrays of different types are mixed in one call ({listing})")
    devices = {name: _device(name, value) for name, value in found.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(
            f"{name}: {_DEVICE_NAMES.get(kind, kind)}:{index}"
            for name, (kind, index) in devices.items()
        )
        raise TypeError(f"arrays on different devices are mixed in one call ({listing})")
    imported = {name: _import(name, value, devices[name]) for name, value in found.items()}
    for name, value in list(arguments.items()):
        if isinstance(value, (tuple, list)):
            items = [imported.get(f"{name}[{i}]", item) for i, item in enumerate(value)]
            arguments[name] = type(value)(items)
        elif name in imported:
            arguments[name] = imported[name]
    # An imported array coming back (out=, inplace=True) is the caller's own object.
    originals = {id(imported[name]): found[name] for name in imported}
    namespace = _namespace(next(iter(found.values())))

    def back(result):
        if isinstance(result, tuple):
            return tuple(back(item) for item in result)
        if id(result) in originals:
            return originals[id(result)]
        if isinstance(result, np.ndarray) or (
            _cupy() is not None and isinstance(result, _cupy().ndarray)
        ):
            return namespace.from_dlpack(result)
        return result

    return back(function(**arguments))


def accepts_dlpack(function: Callable) -> Callable:
    """Decorator for a public op: it also takes arrays of any DLPack library.

    NumPy and CuPy arguments go straight through. Otherwise every array argument (also
    inside ``out=`` tuples) must be of one type and on one device; each is imported
    without a copy (``numpy.from_dlpack`` on the CPU, ``cupy.from_dlpack`` on a CUDA
    device), so the array type picks the backend as for NumPy and CuPy, and the results
    come back as the caller's type (``from_dlpack`` of its namespace; an ``out=`` or
    ``inplace=True`` result is the caller's own object). A strided input is copied to a
    contiguous one inside the op, as a strided NumPy array is; a strided ``out=`` is
    refused. A PyTorch tensor that requires grad is refused (``ValueError``): the
    result would be silently detached; ``fastcnn.torch`` has the ops with autograd.

    >>> import fastcnn.functional as F
    >>> import torch  # doctest: +SKIP
    >>> F.relu(torch.tensor([-1.0, 2.0]))  # doctest: +SKIP
    tensor([0., 2.])
    """
    positional = tuple(
        name
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    )

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if not any(_holds_foreign(value) for value in itertools.chain(args, kwargs.values())):
            return function(*args, **kwargs)
        return _call_foreign(function, positional, args, kwargs)

    return wrapper
