"""The CUDA backend: raw CUDA C kernels from kernels/cuda, compiled at run time by CuPy.

It is available where CuPy is installed and sees a GPU; its kernels are not written yet.
"""

from __future__ import annotations

try:
    import cupy
except ImportError as error:
    raise ImportError("CuPy is not installed") from error

if not cupy.is_available():
    raise ImportError("CuPy found no usable CUDA device")
