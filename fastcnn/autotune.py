"""Autotuning of ``algo="auto"``: time every candidate algorithm once per shape.

>>> import fastcnn
>>> fastcnn.autotune(True)    # doctest: +SKIP
>>> fastcnn.autotune(False)   # back to the shape heuristic

With autotuning on, the first ``"auto"`` call of a convolution shape runs each
candidate algorithm on random data of that shape, keeps the fastest and remembers it
in memory and in a JSON file, so later processes skip the timing. The file lives in
``$FASTCNN_CACHE_DIR``, else ``~/.cache/fastcnn``, else a temporary directory; its keys
hold the shape, dtype, direction, backend, CPU name and fastcnn version, so a new
machine or release tunes afresh. Writes go to a temporary file renamed over the old
one (atomic); one lock serialises tuning between threads of a process.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import astuple
from pathlib import Path

import numpy as np

from fastcnn import _cache_dirs, _shapes

__all__ = ["autotune", "cache_path", "choose", "is_enabled"]

_FILE_NAME = "autotune.json"
#: Timed runs per candidate after one untimed warm-up (which also compiles); best kept.
_REPEATS = 3

_enabled = False
_lock = threading.RLock()
_memory: dict[str, str] = {}


def autotune(enable: bool = True) -> None:
    """Turn autotuning of ``algo="auto"`` on (``True``) or off."""
    global _enabled
    _shapes.flag("enable", enable)
    _enabled = enable


def is_enabled() -> bool:
    return _enabled


def cache_path() -> Path:
    """Where the tuned choices are kept (see the module docstring)."""
    return _cache_dirs.first_writable("") / _FILE_NAME


def _key(geometry, dtype, direction: str, backend: str, device: str | None = None) -> str:
    from fastcnn import __version__
    from fastcnn._config import cpu_name

    shape = ",".join(str(v) for v in astuple(geometry))
    device = cpu_name() if device is None else device
    return f"{backend}|{direction}|{np.dtype(dtype).name}|{shape}|{device}|{__version__}"


def _read(path: Path) -> dict[str, str]:
    try:
        with open(path) as file:
            data = json.load(file)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write(path: Path, key: str, name: str) -> None:
    """Add one entry, keeping what other processes wrote meanwhile; atomic rename."""
    try:
        data = _read(path)
        data[key] = name
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".autotune-", suffix=".json")
        with os.fdopen(handle, "w") as file:
            json.dump(data, file, indent=0, sort_keys=True)
        os.replace(temporary, path)
    except OSError:
        pass  # an unwritable cache only costs the timing again next time


def _time(run: Callable[[], None], synchronize: Callable[[], None] = lambda: None) -> float:
    run()  # warm-up: compiles on first use, faults the pages in
    synchronize()
    best = float("inf")
    for _ in range(_REPEATS):
        start = time.perf_counter()
        run()
        synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def _run(geometry, dtype, direction: str, runners: Mapping[str, Callable], to_device=None):
    """A function of an algorithm's name that runs it on random data of this shape."""
    g = geometry
    rng = np.random.default_rng(0)

    def array(*shape):
        values = rng.standard_normal(shape).astype(dtype)
        return values if to_device is None else to_device(values)

    x = array(g.N, g.C, g.H, g.W)
    weight = array(g.K, g.C // g.groups, g.R, g.S)
    y = array(g.N, g.K, g.P, g.Q)
    arguments = {
        "forward": (x, weight, y.copy()),
        "input_gradient": (y, weight, x.copy()),
        "weight_gradient": (y, x, weight.copy()),
    }[direction]
    return lambda name: lambda: runners[direction](name, *arguments, g)


def choose(
    geometry,
    dtype,
    direction: str,
    default: str,
    names: Sequence[str],
    runners: Mapping[str, Callable],
    backend: str = "numba",
    device: str | None = None,
    to_device: Callable | None = None,
    synchronize: Callable[[], None] = lambda: None,
) -> str:
    """The algorithm for ``algo="auto"`` in ``direction`` ("forward", "input_gradient" or
    "weight_gradient"): ``default`` unless autotuning is on, then the fastest of ``names``
    (timed once per key, remembered in memory and on disk).

    ``runners[direction](name, *arrays, geometry)`` runs one algorithm of the backend
    (forward: x, weight, y; input_gradient: grad_y, weight, grad_x; weight_gradient:
    grad_y, x, grad_weight). ``device`` names what the choice holds for (default: this
    CPU; a GPU backend gives its device's name), ``to_device`` moves the timing's arrays
    there and ``synchronize`` waits for its kernels.
    """
    if not _enabled or len(names) < 2:
        return default
    key = _key(geometry, dtype, direction, backend, device)
    with _lock:
        if key in _memory:
            return _memory[key]
        path = cache_path()
        stored = _read(path).get(key)
        if stored in names:
            _memory[key] = stored
            return stored
        run = _run(geometry, dtype, direction, runners, to_device)
        timings = {name: _time(run(name), synchronize) for name in names}
        best = min(timings, key=timings.__getitem__)
        _memory[key] = best
        _write(path, key, best)
        return best


def clear_memory() -> None:
    """Forget the choices held in memory (the file stays); for tests."""
    with _lock:
        _memory.clear()
