"""The backend registry: which implementation of an op runs.

Each backend is a module (or package) in this folder that calls :func:`register`
for the ops it implements when it is imported. A backend whose import fails is
recorded as unavailable together with the reason, which ``show_config()`` prints.

Kernels receive validated, C-contiguous inputs, preallocated outputs and a
geometry object of plain ints (see ``fastcnn._shapes``); they never re-check.

Selection, first rule that applies:

1. the ``backend=`` keyword of a functional call;
2. ``with fastcnn.use_backend(name):``;
3. the ``FASTCNN_BACKEND`` environment variable;
4. the array type: NumPy -> the fastest CPU backend that has the op, CuPy -> ``cuda``.

A backend named by rules 1-3 never falls back silently: if it lacks the op, the
call raises.

Kernel signatures are :data:`SIGNATURES`: inputs, then preallocated outputs, then
plain parameters; every array C-contiguous, all float arrays of one dtype, float32 or
float64; ``g`` is a ``ConvGeometry`` or ``PoolGeometry`` from ``fastcnn._shapes``;
outputs start with garbage and every element must be written; a ``None`` output is not
wanted. Kernels are called only with a non-empty batch (N, M >= 1).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Backend:
    """What the registry knows of a backend before importing it.

    ``device`` is where its arrays live ("cpu": NumPy, "gpu": CuPy); ``automatic``
    whether the array type alone may pick it (rules 4 below; a testing backend such as
    an emulator is only ever named); ``full`` whether it must implement every op of
    :data:`SIGNATURES` (a test fails when one is missing); ``module`` the module under
    ``fastcnn.backends`` that registers its kernels.
    """

    name: str
    device: str
    automatic: bool
    full: bool
    install: str
    module: str


#: Every backend fastcnn knows, in the order show_config() lists them; among those
#: chosen automatically for an array type, the first available that has the op wins.
RECORDS: tuple[Backend, ...] = (
    Backend("reference", "cpu", True, True, "it needs only NumPy", "reference"),
    Backend("numba", "cpu", True, True, "pip install numba", "numba"),
    Backend(
        "cpp",
        "cpu",
        True,
        False,
        "reinstall fastcnn with a C++ compiler and CMake present: pip install --no-cache-dir .",
        "cpp",
    ),
    Backend(
        "cuda",
        "gpu",
        True,
        False,
        "pip install 'fastcnn[cuda]' (CuPy) on a machine with an NVIDIA GPU",
        "cuda.gpu",
    ),
    # The CUDA kernels run on the CPU under the emulation header: for testing, NumPy arrays.
    Backend(
        "cuda-emu",
        "cpu",
        False,
        False,
        "install a C++17 compiler (g++) on the PATH",
        "cuda.emu",
    ),
)
_RECORDS = {record.name: record for record in RECORDS}
#: Backend names, in :data:`RECORDS` order.
BACKENDS = tuple(_RECORDS)
#: Automatic CPU backends, fastest first: the order in which NumPy calls fall back.
CPU_BACKENDS = ("numba", "cpp", "reference")
#: What to install when a backend is missing.
INSTALL_HINTS = {record.name: record.install for record in RECORDS}

#: Every op a backend may register, with its kernel's signature (see the docstring).
SIGNATURES = {
    "conv2d": "x, weight, bias | None, y, g, *, algo",
    "conv2d_backward": (
        "grad_y, x, weight, grad_x | None, grad_weight, grad_bias | None, g, *, algo"
    ),
    # indices: int64, flat over H*W; -1 for a window lying wholly in the padding
    "max_pool2d": "x, y, indices | None, g",
    "max_pool2d_backward": "grad_y, x, indices | None, grad_x, g",
    "avg_pool2d": "x, y, g",
    "avg_pool2d_backward": "grad_y, grad_x, g",
    # elementwise ops get 1-D arrays
    "relu": "x, y",
    "relu_backward": "grad_y, x, grad_x",
    "leaky_relu": "x, y, negative_slope",
    "leaky_relu_backward": "grad_y, x, grad_x, negative_slope",
    "sigmoid": "x, y",
    "sigmoid_backward": "grad_y, y, grad_x",
    "tanh": "x, y",
    "tanh_backward": "grad_y, y, grad_x",
    # mask: bool, 1-D like x (True: kept); y = x * mask * scale, scale = 1 / (1 - p)
    "dropout": "x, mask, y, scale",
    "dropout_backward": "grad_y, mask, grad_x, scale",
    # x (N, C, L); per-channel mean and biased variance (outputs of the statistics)
    "batch_norm_statistics": "x, mean, var",
    "batch_norm": "x, mean, var, weight | None, bias | None, y, eps",
    "batch_norm_backward": (
        "grad_y, x, mean, var, weight | None, grad_x | None, grad_weight, grad_bias, eps, training"
    ),
    # x (M, in), weight (out, in), y (M, out)
    "linear": "x, weight, bias | None, y",
    "linear_backward": "grad_y, x, weight, grad_x | None, grad_weight, grad_bias | None",
    # (M, C), over the last axis. cross_entropy: int64 labels (M,), -1 for an ignored row
    # (loss and gradient 0), class weights (C,), label smoothing in [0, 1], per-row losses
    # (M,). soft_cross_entropy: targets (M, C), class weights and smoothing folded in.
    # Backward: grad = (sum(target) * softmax - target) * row_scale[:, None]
    "softmax": "x, y",
    "log_softmax": "x, y",
    "cross_entropy": "logits, labels, weight, smoothing, losses",
    "cross_entropy_backward": "logits, labels, weight, smoothing, row_scale, grad_logits",
    "soft_cross_entropy": "logits, targets, losses",
    "soft_cross_entropy_backward": "logits, targets, row_scale, grad_logits",
}

_kernels: dict[tuple[str, str], Callable] = {}
_algorithms: dict[tuple[str, str], Any] = {}
_status: dict[str, tuple[bool, str]] = {}
_load_lock = threading.RLock()
_context_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fastcnn_backend", default=None
)


class BackendUnavailableError(RuntimeError):
    """A known backend cannot run here (its library or device is missing)."""


def record(name: str) -> Backend:
    """The record of backend ``name`` (``KeyError`` for an unknown name)."""
    return _RECORDS[name]


def register(op: str, backend: str, algorithms: Any = None) -> Callable[[Callable], Callable]:
    """Decorator: make ``fn`` the implementation of ``op`` on ``backend``.

    ``algorithms`` (conv2d): the backend's algorithm table, with ``names``,
    ``takes(name, g, direction)``, ``heuristic(g, direction) -> (name, why)`` and
    ``choose(g, direction, dtype)`` (what ``"auto"`` runs); the kernel then takes the
    resolved name by keyword, ``algo=``.
    """
    if backend not in _RECORDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if op not in SIGNATURES:
        raise ValueError(f"unknown op {op!r}; expected one of {sorted(SIGNATURES)}")

    def decorate(fn: Callable) -> Callable:
        _kernels[(op, backend)] = fn
        if algorithms is not None:
            _algorithms[(op, backend)] = algorithms
        return fn

    return decorate


def algorithm_table(op: str, backend: str) -> Any:
    """The algorithm table ``backend`` registered for ``op``, or None."""
    _load(backend)
    return _algorithms.get((op, backend))


def algorithms(op: str, backend: str) -> tuple[str, ...]:
    """The algorithms ``backend`` offers for ``op`` besides ``"auto"`` (may be empty)."""
    table = algorithm_table(op, backend)
    return () if table is None else tuple(table.names)


def _load(backend: str) -> tuple[bool, str]:
    """Import a backend's module once; remember whether it worked and why not."""
    with _load_lock:
        if backend not in _status:
            try:
                module = importlib.import_module(f"fastcnn.backends.{_RECORDS[backend].module}")
                reason = getattr(module, "UNAVAILABLE_REASON", None)
                _status[backend] = (reason is None, reason or "ok")
            except Exception as error:  # any import failure makes the backend unavailable
                _status[backend] = (False, f"{type(error).__name__}: {error}")
        return _status[backend]


def backend_status() -> dict[str, tuple[bool, str]]:
    """``{name: (available, reason)}`` for every known backend."""
    return {name: _load(name) for name in BACKENDS}


def available_backends() -> list[str]:
    """Names of the backends that can run here, in :data:`BACKENDS` order."""
    return [name for name in BACKENDS if _load(name)[0]]


def ops_of(backend: str) -> list[str]:
    """The ops a backend implements (empty when it is unavailable)."""
    if not _load(backend)[0]:
        return []
    return sorted(op for op, name in _kernels if name == backend)


def has_op(op: str, backend: str) -> bool:
    return _load(backend)[0] and (op, backend) in _kernels


def check_backend_name(name: str) -> str:
    """Return ``name`` if it is a usable backend, else raise saying what to do."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    available, reason = _load(name)
    if not available:
        raise BackendUnavailableError(
            f"backend {name!r} is not available ({reason}); to get it: {INSTALL_HINTS[name]}"
        )
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the calls inside the block on backend ``name`` (per thread and task).

    >>> import numpy as np, fastcnn
    >>> with fastcnn.use_backend("reference"):
    ...     y = fastcnn.functional.relu(np.ones(3, np.float32))
    """
    token = _context_backend.set(check_backend_name(name))
    try:
        yield
    finally:
        _context_backend.reset(token)


def requested_backend(keyword: str | None) -> str | None:
    """The backend named by the keyword, the context or the environment, if any."""
    if keyword is not None:
        return keyword
    name = _context_backend.get()
    if name is not None:
        return name
    return os.environ.get("FASTCNN_BACKEND") or None


def select(op: str, on_gpu: bool, keyword: str | None = None) -> tuple[str, Callable]:
    """Pick the implementation of ``op`` by the rules in this module's docstring."""
    device = "gpu" if on_gpu else "cpu"
    name = requested_backend(keyword)
    if name is not None:
        check_backend_name(name)
        if _RECORDS[name].device != device:
            expected = "CuPy" if _RECORDS[name].device == "gpu" else "NumPy"
            got = "CuPy" if on_gpu else "NumPy"
            raise TypeError(f"backend {name!r} takes {expected} arrays, got {got} arrays")
        kernel = _kernels.get((op, name))
        if kernel is None:
            raise NotImplementedError(
                f"backend {name!r} does not implement {op!r}; it implements {ops_of(name)}"
            )
        return name, kernel
    order = CPU_BACKENDS if device == "cpu" else BACKENDS
    candidates = [n for n in order if _RECORDS[n].device == device and _RECORDS[n].automatic]
    for name in candidates:
        if _load(name)[0] and (op, name) in _kernels:
            return name, _kernels[(op, name)]
    for name in candidates:
        check_backend_name(name)  # raises, saying what to install
    raise NotImplementedError(f"no available backend implements {op!r}")
