"""Compile a call's second kernel in a worker process while this one compiles the first.

Numba compiles under one lock per process, so a call that runs two kernels, each
compiled for seconds on a cold cache, pays for them one after the other: conv2d's
backward compiles its input gradient (3-4 s) and then its weight gradient (3-4 s). With
a second core, the second kernel can compile at the same time in a worker process,
which saves it to the shared on-disk cache; this process loads it from there when it
gets to it (milliseconds)::

    with aside("fastcnn.backends.numba.conv2d:compile_weight_gradient", args):
        first_kernel(...)      # a cache miss here starts the worker
    second_kernel(...)         # loaded from the cache the worker filled

The worker starts only when a compilation does (a cache miss, seen through Numba's
``numba:compile`` events in this thread), so a warm cache costs nothing. It runs
``module:function(*args)`` in a fresh interpreter (no fork of a threaded process, and
the caller's ``__main__`` is not re-run). If it cannot start, fails, or outlasts
``TIMEOUT``, the second kernel compiles here, as it would have without it.

``FASTCNN_COMPILE_ASIDE=0`` turns it off; it is off on a single core and inside the
workers themselves (and those of ``python -m fastcnn compile``, already one per core).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

from numba.core import event

#: Seconds to wait for a worker before compiling here instead.
TIMEOUT = 120.0

_local = threading.local()
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])


def enabled() -> bool:
    if os.environ.get("FASTCNN_COMPILE_ASIDE", "1").strip() in ("0", "false", "no", "off"):
        return False
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    # An embedding host (sys.executable not an interpreter) would not run `-c` as Python.
    return cores > 1 and Path(sys.executable or "-").name.lower().startswith("python")


class _Pending:
    """A job waiting for this thread's next compilation, then the worker running it."""

    def __init__(self, target: str, args: tuple) -> None:
        self.target, self.args = target, args
        self.worker: subprocess.Popen | None = None
        self.tried = False

    def start(self) -> None:
        self.tried = True
        env = dict(os.environ, FASTCNN_COMPILE_ASIDE="0", FASTCNN_QUIET="1")
        env["PYTHONPATH"] = os.pathsep.join(
            [_PACKAGE_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        try:
            worker = subprocess.Popen(
                [sys.executable, "-c", f"import {__name__} as a; a._work()"],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
            )
        except OSError:
            return
        try:
            with worker.stdin:
                pickle.dump((self.target, self.args), worker.stdin)
        except (OSError, pickle.PicklingError):
            worker.kill()
            worker.wait()
            return
        self.worker = worker

    def finish(self) -> None:
        if self.worker is None:
            return
        try:
            self.worker.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.worker.kill()
            self.worker.wait()


@contextlib.contextmanager
def aside(target: str, args: tuple):
    """Within the block, the first compilation in this thread starts a worker running
    ``target`` (``"module:function"``) on ``args``; leaving the block waits for it."""
    if not enabled() or getattr(_local, "pending", None) is not None:
        yield
        return
    pending = _local.pending = _Pending(target, args)
    try:
        yield
    finally:
        _local.pending = None
        pending.finish()


def started_worker() -> bool:
    """Whether the current ``aside`` block started its worker (for tests)."""
    pending = getattr(_local, "pending", None)
    return pending is not None and pending.worker is not None


class _StartOnCompile(event.Listener):
    def on_start(self, ev) -> None:
        pending = getattr(_local, "pending", None)
        if pending is not None and not pending.tried:
            pending.start()

    def on_end(self, ev) -> None:
        pass


_installed = False


def install() -> None:
    """Listen to Numba's compile events (once per process)."""
    global _installed
    if not _installed:
        _installed = True
        event.register("numba:compile", _StartOnCompile())


def _work() -> None:
    """The worker: read (target, args) from stdin and run it."""
    target, args = pickle.load(sys.stdin.buffer)
    module, function = target.split(":")
    getattr(importlib.import_module(module), function)(*args)
