"""Backend ``cuda-emu``: the CUDA kernels of kernels/cuda compiled by g++ and run on the
CPU with NumPy arrays (see ``kernels/cuda/emulate``). For testing: never chosen by array
type, only by name."""

from __future__ import annotations

from fastcnn.backends.cuda._families import register_all
from fastcnn.backends.cuda._runtime import EmulatedRuntime

RUNTIME = EmulatedRuntime()
register_all("cuda-emu", RUNTIME)
