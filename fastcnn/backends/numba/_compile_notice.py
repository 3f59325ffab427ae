"""Say so when a call compiles Numba kernels, instead of stalling for seconds unannounced.

Numba compiles a kernel on its first call per type signature and keeps the machine code
in an on-disk cache keyed by the CPU and the source, so later processes load it in
milliseconds. A cold cache (a new machine, CPU or fastcnn version) makes the first call
of an op compile for seconds. This module listens to Numba's ``numba:compile`` events,
which fire on cache misses only, and writes to stderr (``FASTCNN_QUIET=1`` silences it):

- once per process, on the first compilation: what compiles, why, and how to pay the
  cost ahead (``python -m fastcnn compile``);
- after each of fastcnn's kernels that took more than a second: its name and the time.

The same lines go to the ``fastcnn`` logger at INFO level.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path

from numba.core import event

logger = logging.getLogger("fastcnn")

#: A compilation longer than this (seconds) is reported when it ends.
REPORT_AFTER = 1.0


class CompileNotice(event.Listener):
    """Reports fastcnn's outermost compilations (callees compile inside their caller's)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._announced = False

    def _stack(self) -> list:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    @staticmethod
    def _name(ev) -> str | None:
        function = getattr(ev.data.get("dispatcher"), "py_func", None)
        module = getattr(function, "__module__", "") or ""
        if not module.startswith("fastcnn."):
            return None
        return f"{module.rsplit('.', 1)[-1]}.{function.__name__}"

    def on_start(self, ev) -> None:
        stack = self._stack()
        stack.append((self._name(ev), time.perf_counter()))
        if len(stack) == 1 and stack[0][0] is not None and not self._announced:
            self._announced = True
            from fastcnn._config import cpu_name

            _say(
                f"fastcnn: compiling Numba kernels for this CPU ({cpu_name()}) on their first "
                "use: a few seconds per op, once per CPU and fastcnn version (cached in "
                f"{_cache_dir()}). `python -m fastcnn compile` compiles them all ahead."
            )

    def on_end(self, ev) -> None:
        stack = self._stack()
        if not stack:
            return
        name, started = stack.pop()
        elapsed = time.perf_counter() - started
        if not stack and name is not None and elapsed > REPORT_AFTER:
            _say(f"fastcnn: compiled {name} in {elapsed:.1f} s")


def _cache_dir() -> str:
    import numba

    return numba.config.CACHE_DIR or str(Path(__file__).resolve().parent / "__pycache__")


def _say(message: str) -> None:
    logger.info(message)
    if os.environ.get("FASTCNN_QUIET", "") not in ("", "0"):
        return
    print(message, file=sys.stderr, flush=True)


_installed = False


def install() -> None:
    """Listen to Numba's compile events (once per process)."""
    global _installed
    if not _installed:
        _installed = True
        event.register("numba:compile", CompileNotice())
