"""Backend ``cuda``: the kernels of kernels/cuda compiled by CuPy's ``RawModule`` and run
on CuPy's current device and stream. Available where CuPy is installed and sees a GPU."""

from __future__ import annotations

try:
    import cupy
except ImportError as error:
    raise ImportError("CuPy is not installed") from error

if not cupy.is_available():
    raise ImportError("CuPy found no usable CUDA device")

from fastcnn.backends.cuda._families import register_all
from fastcnn.backends.cuda._runtime import GpuRuntime

RUNTIME = GpuRuntime()
register_all("cuda", RUNTIME)
