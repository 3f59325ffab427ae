"""Where fastcnn keeps files between runs (autotuning choices, Numba's compiled kernels)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def writable(directory: Path) -> bool:
    """Whether ``directory`` exists (it is made if need be) and a file can be created in it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def candidates(name: str) -> list[Path]:
    """``$FASTCNN_CACHE_DIR/name``, ``~/.cache/fastcnn/name``, then a per-user temp dir."""
    configured = os.environ.get("FASTCNN_CACHE_DIR")
    places = [Path(configured)] if configured else []
    places += [
        Path.home() / ".cache" / "fastcnn",
        Path(tempfile.gettempdir()) / f"fastcnn-{os.getuid()}",
    ]
    return [place / name for place in places]


def first_writable(name: str) -> Path:
    """The first writable of :func:`candidates` (the last one when none is)."""
    places = candidates(name)
    return next((place for place in places if writable(place)), places[-1])
