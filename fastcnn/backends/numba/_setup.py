"""Numba configuration shared by the kernels: threading layer, cache location, jit flags."""

from __future__ import annotations

import os
from pathlib import Path

import numba
from numba.core.caching import FunctionCache
from numba.core.runtime import rtsys

from fastcnn import _cache_dirs

#: Compiler flags for every kernel. 'reassoc' and 'contract' let LLVM vectorise
#: reductions and fuse multiply-adds; the full fastmath set would also assume no NaN,
#: which makes np.isnan(NaN) False and breaks NaN propagation.
FASTMATH = {"reassoc", "contract"}


def configure() -> None:
    """Pick a thread-safe threading layer and make sure the on-disk cache has a home."""
    if "NUMBA_THREADING_LAYER" not in os.environ:
        # workqueue aborts the process when two Python threads enter parallel code.
        numba.config.THREADING_LAYER = "threadsafe"
    if not os.environ.get("NUMBA_CACHE_DIR"):
        package = Path(__file__).resolve().parent / "__pycache__"
        if not _cache_dirs.writable(package):
            numba.config.CACHE_DIR = str(_cache_dirs.first_writable("numba"))
    from fastcnn.backends.numba import _aside, _compile_notice

    _compile_notice.install()
    _aside.install()


class _CacheLoadedWithoutRefresh(FunctionCache):
    """Numba's on-disk cache, loading without first populating the compiler's registries.

    Before each load Numba refreshes the target context: it imports and installs every
    typing and lowering registry (numba.np.arraymath, linalg, which imports
    scipy.linalg, ...), 0.4-0.5 s once per process, of a warm ``import fastcnn`` plus
    first ``conv2d`` of 0.8-0.9 s. Loaded machine code needs none of it, only Numba's
    runtime (NRT) for its allocations; a compilation still refreshes first (Numba's
    compiler does so itself), so a cache miss behaves as before.
    """

    def load_overload(self, sig, target_context):
        rtsys.initialize(target_context)
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)


#: The private methods the load above relies on (Numba 0.59-0.68); without them,
#: Numba's own load runs.
_LOAD_WITHOUT_REFRESH = all(
    hasattr(FunctionCache, name) for name in ("_load_overload", "_guard_against_spurious_io_errors")
)


def _cached(dispatcher):
    if _LOAD_WITHOUT_REFRESH:
        dispatcher._cache = _CacheLoadedWithoutRefresh(dispatcher.py_func)
    return dispatcher


def jit(*args, parallel: bool = False, **kwargs):
    """``numba.njit`` with fastcnn's flags: cached, no GIL, NaN-safe fastmath."""
    options = {
        "cache": True,
        "nogil": True,
        "fastmath": FASTMATH,
        "error_model": "numpy",
        "parallel": parallel,
        **kwargs,
    }
    if not options["cache"]:
        return numba.njit(*args, **options)
    if args and callable(args[0]):
        return _cached(numba.njit(*args, **options))
    decorator = numba.njit(*args, **options)
    return lambda function: _cached(decorator(function))
