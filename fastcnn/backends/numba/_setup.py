"""Numba configuration shared by the kernels: threading layer, cache location, jit flags."""

from __future__ import annotations

import os
from pathlib import Path

import numba

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
    from fastcnn.backends.numba import _compile_notice

    _compile_notice.install()


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
    return numba.njit(*args, **options)
