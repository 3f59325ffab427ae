"""Compiling the CUDA sources and launching their kernels, on a GPU (CuPy) or emulated.

A :class:`Source` is one ``.cu`` file of ``kernels/cuda`` and the template instances
(CuPy's ``name_expressions``) it offers for a dtype. A :class:`Runtime` compiles a
source once per (device, dtype) and launches a kernel with a grid, a block, arguments
(arrays and NumPy scalars, as CuPy takes them) and dynamic shared memory bytes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

import fastcnn

#: C type names of the float dtypes, as the kernels' templates take them.
C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def kernel_dir() -> Path:
    """``kernels/cuda``: inside the installed package, or beside it in a source tree."""
    package = Path(fastcnn.__file__).resolve().parent
    for place in (package / "kernels" / "cuda", package.parent / "kernels" / "cuda"):
        if (place / "common.cuh").is_file():
            return place
    raise FileNotFoundError(
        f"the CUDA sources (kernels/cuda) are missing beside {package}; reinstall fastcnn"
    )


@dataclass(frozen=True)
class Source:
    """A kernel file and the name expressions it offers for one dtype's C type."""

    file: str
    expressions: Callable[[str], Sequence[str]]

    def code(self) -> str:
        return (kernel_dir() / self.file).read_text()


class Runtime:
    """Where kernels run: ``xp`` is the array module, ``launch`` runs one kernel."""

    name: str
    xp: ModuleType
    #: Threads per block the launch code may use at most, and blocks a grid-stride
    #: loop is given at most: the emulator keeps both small, so the multi-block and
    #: grid-stride paths run on small test inputs.
    max_threads: int
    max_grid: int
    #: Blocks that fill the device (a split-K GEMM splits until it has this many).
    target_blocks: int

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._modules: dict = {}

    def device_name(self) -> str:
        """What autotuning keys its choices by."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for the kernels launched so far (timing)."""

    def threads(self, wanted: int) -> int:
        return min(wanted, self.max_threads)

    def grid(self, items: int, per_block: int) -> int:
        """Blocks for ``items`` work items at ``per_block`` each, capped for grid-stride loops."""
        return max(1, min(-(-items // per_block), self.max_grid))

    def module(self, source: Source, dtype: np.dtype):
        key = (self._device_key(), source.file, np.dtype(dtype))
        with self._lock:
            module = self._modules.get(key)
            if module is None:
                expressions = tuple(source.expressions(C_TYPES[np.dtype(dtype)]))
                module = self._compile(source.code(), expressions)
                self._modules[key] = module
            return module

    def launch(self, source, dtype, expression, grid, block, args, shared_mem=0) -> None:
        """Run ``expression`` (a name expression of ``source``, ``{T}`` standing for the C
        type of ``dtype``) on a grid of ``grid`` blocks of ``block`` threads."""
        name = expression.format(T=C_TYPES[np.dtype(dtype)])
        self._launch(self.module(source, dtype), name, _dims(grid), _dims(block), args,
                     shared_mem)  # fmt: skip

    # what the two runtimes do differently
    def _device_key(self):
        raise NotImplementedError

    def _compile(self, code: str, expressions: tuple[str, ...]):
        raise NotImplementedError

    def _launch(self, module, expression, grid, block, args, shared_mem) -> None:
        raise NotImplementedError

    @staticmethod
    def pointer(array) -> int:
        raise NotImplementedError


def _dims(value) -> tuple[int, int, int]:
    value = (value,) if isinstance(value, int) else tuple(value)
    return (*value, *(1,) * (3 - len(value)))


#: Options of every compile (the emulator reads the -D defines and ignores the rest).
OPTIONS = ("--std=c++17",)


class GpuRuntime(Runtime):
    """CuPy: ``RawModule`` per device, kernels on CuPy's current device and stream."""

    name = "cuda"
    max_threads = 1024
    max_grid = 1 << 20

    def __init__(self) -> None:
        super().__init__()
        import cupy

        self.xp = cupy
        self._cupy = cupy
        self.target_blocks = 2 * cupy.cuda.Device().attributes["MultiProcessorCount"]

    def _device_key(self):
        return self._cupy.cuda.Device().id

    def device_name(self) -> str:
        device = self._cupy.cuda.Device()
        return self._cupy.cuda.runtime.getDeviceProperties(device.id)["name"].decode()

    def synchronize(self) -> None:
        self._cupy.cuda.get_current_stream().synchronize()

    def _compile(self, code, expressions):
        options = (*OPTIONS, f"-I{kernel_dir()}")
        return self._cupy.RawModule(code=code, options=options, name_expressions=expressions)

    def _launch(self, module, expression, grid, block, args, shared_mem):
        function = module.get_function(expression)
        if shared_mem > 48 * 1024:  # a block gets more only when asked for
            function.max_dynamic_shared_size_bytes = shared_mem
        function(grid, block, args, shared_mem=shared_mem)

    @staticmethod
    def pointer(array) -> int:
        return array.data.ptr


class EmulatedRuntime(Runtime):
    """The same sources compiled by g++ and run on the CPU with NumPy arrays."""

    name = "cuda-emu"
    max_threads = 64
    max_grid = 6
    target_blocks = 4

    def __init__(self) -> None:
        super().__init__()
        from fastcnn.backends.cuda import _emulator

        self.xp = np
        self._emulator = _emulator

    def _device_key(self):
        return "cpu"

    def device_name(self) -> str:
        from fastcnn._config import cpu_name

        return f"emulated on {cpu_name()}"

    def _compile(self, code, expressions):
        return self._emulator.EmulatedModule(
            code, expressions, options=OPTIONS, include_dirs=(kernel_dir(),)
        )

    def _launch(self, module, expression, grid, block, args, shared_mem):
        module.launch(expression, grid, block, args, shared_mem)

    @staticmethod
    def pointer(array) -> int:
        return array.ctypes.data


def aligned(*pointers: int) -> bool:
    """Whether every address is 16-byte aligned (the packed paths' loads and stores)."""
    return all(p % 16 == 0 for p in pointers)
