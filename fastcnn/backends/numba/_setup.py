"""Numba configuration shared by the kernels: threading layer, cache location, jit flags."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numba

#: Compiler flags for every kernel. 'reassoc' and 'contract' let LLVM vectorise
#: reductions and fuse multiply-adds; the full fastmath set would also assume no NaN,
#: which makes np.isnan(NaN) False and breaks NaN propagation.
FASTMATH = {"reassoc", "contract"}


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def configure() -> None:
    """Pick a thread-safe threading layer and make sure the on-disk cache has a home."""
    if "NUMBA_THREADING_LAYER" not in os.environ:
        # workqueue aborts the process when two Python threads enter parallel code.
        numba.config.THREADING_LAYER = "threadsafe"
    if not os.environ.get("NUMBA_CACHE_DIR"):
        package = Path(__file__).resolve().parent / "__pycache__"
        if not _writable(package):
            for candidate in (
                Path.home() / ".cache" / "fastcnn" / "numba",
                Path(tempfile.gettempdir()) / f"fastcnn-numba-{os.getuid()}",
            ):
                if _writable(candidate):
                    numba.config.CACHE_DIR = str(candidate)
                    break


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
