"""Run fastcnn's CUDA C kernels on the CPU: the module loader of the ``cuda-emu`` backend.

The same ``kernels/cuda/*.cu`` source that CuPy's ``RawModule`` compiles for a GPU is compiled
here by g++ as C++, with ``kernels/cuda/emulate/cuda_emulate.h`` included first, and its kernels
are launched with NumPy arrays: each block's threads run as fibers that switch at barriers
(``kernels/cuda/emulate/README.md`` says what is modelled and what is not).

This module needs neither CuPy nor a GPU, only g++. It imports nothing from the CUDA backend.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import dataclasses
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from fastcnn import _cache_dirs
from fastcnn.backends.cuda._runtime import kernel_dir

# Beside the kernels: kernels/cuda in a source tree, fastcnn/kernels/cuda in a wheel.
EMULATE_DIR = kernel_dir() / "emulate"
HEADER = EMULATE_DIR / "cuda_emulate.h"
RUNTIME_SOURCE = EMULATE_DIR / "runtime.cpp"

# One set of flags for the runtime and the modules: they share the structs of cuda_emulate.h.
_FLAGS = ("-std=c++17", "-O2", "-fPIC", "-shared", "-pthread", "-fvisibility=hidden")
_MODULE_FLAGS = ("-Wno-unknown-pragmas", "-include", str(HEADER))
_ORDERS = {"forward": 0, "reverse": 1, "shuffle": 2}
_STACK_BYTES = 64 * 1024
_ERROR_BYTES = 2048
_ERROR_KINDS = {
    1: "invalid configuration",
    2: "barrier divergence",
    3: "warp divergence",
    4: "trap",
    5: "system error",
}
_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.MULTILINE)


class _LaunchOptions(ctypes.Structure):
    """``fastcnn_emulate::LaunchOptions`` of cuda_emulate.h."""

    _fields_ = [
        ("order", ctypes.c_int),
        ("workers", ctypes.c_uint),
        ("seed", ctypes.c_uint64),
        ("blocks", ctypes.POINTER(ctypes.c_uint64)),
        ("block_count", ctypes.c_uint64),
        ("stack_bytes", ctypes.c_uint64),
    ]


@dataclasses.dataclass(frozen=True)
class _Settings:
    """What :func:`emulation` sets, with the C struct built once."""

    order: str = "forward"
    seed: int = 0
    blocks: tuple[int, ...] | None = None
    workers: int | None = None
    stack_bytes: int = _STACK_BYTES

    @functools.cached_property
    def launch_options(self) -> tuple[_LaunchOptions, np.ndarray | None]:
        listed = None if self.blocks is None else np.array(self.blocks, dtype=np.uint64)
        options = _LaunchOptions(
            order=_ORDERS[self.order],
            workers=self.workers or _default_workers(),
            seed=self.seed % 2**64,
            blocks=None
            if listed is None
            else listed.ctypes.data_as(ctypes.POINTER(ctypes.c_uint64)),
            block_count=0 if listed is None else len(listed),
            stack_bytes=self.stack_bytes,
        )
        return options, listed  # the array stays alive as long as the struct points into it


def _settings_from_environment() -> _Settings:
    """``FASTCNN_EMULATE_ORDER`` / ``FASTCNN_EMULATE_SEED``: run a whole test suite reversed or
    shuffled without editing it."""
    order = os.environ.get("FASTCNN_EMULATE_ORDER", "forward")
    if order not in _ORDERS:
        raise ValueError(f"FASTCNN_EMULATE_ORDER must be one of {sorted(_ORDERS)}, got {order!r}")
    return _Settings(order=order, seed=int(os.environ.get("FASTCNN_EMULATE_SEED", "0")))


_settings: contextvars.ContextVar[_Settings | None] = contextvars.ContextVar(
    "fastcnn_cuda_emulation", default=None
)


def _current_settings() -> _Settings:
    settings = _settings.get()
    if settings is None:
        settings = _settings_from_environment()
        _settings.set(settings)
    return settings


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def emulation(
    order: str = "forward",
    seed: int = 0,
    blocks: Sequence[int] | None = None,
    workers: int | None = None,
    *,
    stack_bytes: int = _STACK_BYTES,
) -> Iterator[None]:
    """Settings for the emulated launches made in this thread (and its context) inside the block.

    Parameters
    ----------
    order : {"forward", "reverse", "shuffle"}
        The order in which a block's threads run between barriers: by increasing or decreasing
        linear thread index, or a fresh permutation each time (seeded by ``seed`` and the block
        index). A kernel that gives different results in different orders lacks a barrier.
    seed : int
        The seed of ``"shuffle"``.
    blocks : sequence of int, optional
        Run only these linear block indices (``x + y * gridDim.x + z * gridDim.x * gridDim.y``);
        the others leave memory untouched. Lets a test check the last blocks of a huge grid.
    workers : int, optional
        OS threads running blocks in parallel, the launching thread included (default: one per
        usable core).
    stack_bytes : int
        Stack of each emulated thread (default 64 KiB).

    Examples
    --------
    >>> from fastcnn.backends.cuda._emulator import emulation
    >>> with emulation(order="reverse", workers=1):
    ...     pass  # launches here run each block's threads last to first
    """
    if order not in _ORDERS:
        raise ValueError(f"order must be one of {sorted(_ORDERS)}, got {order!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if stack_bytes < 16384:
        raise ValueError(f"stack_bytes must be at least 16384, got {stack_bytes}")
    listed = None
    if blocks is not None:
        listed = tuple(int(block) for block in blocks)
        if any(block < 0 for block in listed):
            raise ValueError("block indices must be non-negative")
    token = _settings.set(_Settings(order, int(seed), listed, workers, int(stack_bytes)))
    try:
        yield
    finally:
        _settings.reset(token)


# ---- Compiling.


def is_available() -> bool:
    """Whether g++ is there to compile emulated modules."""
    return shutil.which(_compiler()) is not None


def _compiler() -> str:
    return os.environ.get("FASTCNN_EMULATE_CXX", "g++")


@functools.cache
def _compiler_version(compiler: str) -> str:
    try:
        completed = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError) as error:
        raise RuntimeError(
            f"cuda-emu needs a C++ compiler: {compiler!r} did not run ({error})"
        ) from error
    return completed.stdout


def _digest(*parts: str | bytes) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        hasher.update(len(data).to_bytes(8, "little") + data)
    return hasher.hexdigest()


def _run_compiler(arguments: list[str]) -> None:
    """Runs g++; a failure becomes a RuntimeError carrying its diagnostics."""
    completed = subprocess.run(arguments, capture_output=True, text=True)
    if completed.returncode != 0:
        diagnostics = completed.stderr.strip()
        if len(diagnostics) > 8000:
            diagnostics = diagnostics[:8000] + "\n[... more diagnostics left out]"
        raise RuntimeError(f"cuda-emu: g++ failed:\n{' '.join(arguments)}\n{diagnostics}")


def _build(target: Path, arguments: list[str]) -> None:
    """Compiles to a temporary name in ``target``'s folder and renames it into place, so that
    processes building the same file at once each see a whole file or none."""
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(descriptor)
    try:
        _run_compiler([*arguments, "-o", temporary])
        os.replace(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


_build_lock = threading.Lock()


@functools.cache
def _runtime(cache: Path) -> tuple[Path, str]:
    """The scheduler library every module links against, and its key."""
    try:
        return _build_runtime(cache, ())
    except OSError as error:
        if "static TLS" not in str(error):
            raise
        # Other libraries took glibc's spare static TLS: the slower general-dynamic model.
        return _build_runtime(cache, ("-DFASTCNN_EMULATE_GENERAL_TLS",))


def _build_runtime(cache: Path, defines: tuple[str, ...]) -> tuple[Path, str]:
    compiler = _compiler()
    key = _digest(
        _compiler_version(compiler),
        *_FLAGS,
        *defines,
        RUNTIME_SOURCE.read_bytes(),
        HEADER.read_bytes(),
    )[:20]
    path = cache / f"libfastcnn_emulate-{key}.so"
    if not path.exists():
        _build(
            path,
            [compiler, *_FLAGS, *defines, f"-Wl,-soname,{path.name}", str(RUNTIME_SOURCE)],
        )
    # Loaded once here, globally, so the modules' undefined symbols resolve even if the runtime
    # library is not found again through their RUNPATH.
    ctypes.CDLL(str(path), mode=os.RTLD_NOW | os.RTLD_GLOBAL)
    return path, key


def _included_headers(code: str, include_dirs: Sequence[Path]) -> list[tuple[str, bytes]]:
    """Every file reachable through ``#include "..."`` from ``code`` in ``include_dirs``: what
    the cache key must cover besides the code (system headers are covered by the compiler's
    version)."""
    found: dict[Path, bytes] = {}
    pending = [(code, list(include_dirs))]
    while pending:
        text, search = pending.pop()
        for name in _INCLUDE.findall(text):
            for directory in search:
                candidate = (Path(directory) / name).resolve()
                if candidate.is_file():
                    if candidate not in found:
                        found[candidate] = candidate.read_bytes()
                        text_of = found[candidate].decode(errors="replace")
                        pending.append((text_of, [candidate.parent, *include_dirs]))
                    break
    return sorted((str(path), data) for path, data in found.items())


def _passed_options(options: Sequence[str]) -> list[str]:
    """nvcc options that mean the same to g++ (defines and include folders); the rest
    (``--std``, ``-arch``, ``--use_fast_math``, ...) only concern the GPU build."""
    passed = []
    options = list(options)
    for index, option in enumerate(options):
        if option in ("-D", "-U", "-I") and index + 1 < len(options):
            passed += [option, options[index + 1]]
        elif option.startswith(("-D", "-U", "-I")) and len(option) > 2:
            passed.append(option)
        elif option.startswith(("--define-macro=", "--include-path=")):
            flag = "-D" if option.startswith("--define-macro=") else "-I"
            passed.append(flag + option.split("=", 1)[1])
    return passed


def _launcher_source(code: str, name_expressions: Sequence[str]) -> str:
    lines = ['#line 1 "kernel.cu"', code, "", '#line 1 "fastcnn-emulate-launchers"']
    for index, expression in enumerate(name_expressions):
        quoted = expression.replace("\\", "\\\\").replace('"', '\\"')
        lines += [
            f'extern "C" __attribute__((visibility("default"))) int fastcnn_launch_{index}(',
            "    const unsigned* grid, const unsigned* block, size_t shared_bytes, void** args,",
            "    const fastcnn_emulate::LaunchOptions* options, char* error, size_t error_size) {",
            f'  return fastcnn_emulate::launch(&{expression}, "{quoted}", grid, block,',
            "                                  shared_bytes, args, options, error, error_size);",
            "}",
            f'extern "C" __attribute__((visibility("default"))) const char* '
            f"fastcnn_signature_{index}() {{",
            f"  return fastcnn_emulate::signature(&{expression});",
            "}",
        ]
    return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class _Kernel:
    name: str
    function: ctypes._CFuncPtr
    parameters: tuple[str, ...]


_loaded: dict[str, dict[str, _Kernel]] = {}


def _load(
    code: str,
    name_expressions: tuple[str, ...],
    options: tuple[str, ...],
    include_dirs: tuple[Path, ...],
) -> tuple[Path, dict[str, _Kernel]]:
    cache = _cache_dirs.first_writable("cuda-emu")
    cache.mkdir(parents=True, exist_ok=True)
    with _build_lock:
        runtime, runtime_key = _runtime(cache)
        passed = _passed_options(options)
        headers = _included_headers(code, include_dirs)
        key = _digest(
            runtime_key,
            *_MODULE_FLAGS,
            code,
            *[part for path, data in headers for part in (path, data)],
            *passed,
            *[str(directory) for directory in include_dirs],
            *name_expressions,
        )[:24]
        path = cache / f"module-{key}.so"
        if key in _loaded:
            return path, _loaded[key]
        if not path.exists():
            with tempfile.TemporaryDirectory(prefix="fastcnn-emulate-") as folder:
                source = Path(folder) / "module.cpp"
                source.write_text(_launcher_source(code, name_expressions))
                _build(
                    path,
                    [
                        _compiler(),
                        *_FLAGS,
                        *_MODULE_FLAGS,
                        *[f"-I{directory}" for directory in include_dirs],
                        *passed,
                        "-x",
                        "c++",
                        str(source),
                        "-x",
                        "none",
                        str(runtime),
                        "-Wl,-rpath,$ORIGIN",
                    ],
                )
        library = ctypes.CDLL(str(path))
        kernels = {}
        for index, expression in enumerate(name_expressions):
            function = getattr(library, f"fastcnn_launch_{index}")
            function.restype = ctypes.c_int
            function.argtypes = [
                ctypes.POINTER(ctypes.c_uint),
                ctypes.POINTER(ctypes.c_uint),
                ctypes.c_size_t,
                ctypes.POINTER(ctypes.c_void_p),
                ctypes.POINTER(_LaunchOptions),
                ctypes.c_char_p,
                ctypes.c_size_t,
            ]
            signature = getattr(library, f"fastcnn_signature_{index}")
            signature.restype = ctypes.c_char_p
            codes = signature().decode()
            parameters = tuple(codes.split(",")) if codes else ()
            kernels.setdefault(expression, _Kernel(expression, function, parameters))
        _loaded[key] = kernels
        return path, kernels


# ---- Launching.

_SCALAR_NAMES = {
    "b1": "bool",
    "i1": "int8",
    "i2": "int16",
    "i4": "int32",
    "i8": "int64",
    "u1": "uint8",
    "u2": "uint16",
    "u4": "uint32",
    "u8": "uint64",
    "f4": "float32",
    "f8": "float64",
}


def _dtype_code(dtype: np.dtype) -> str:
    return f"{dtype.kind}{dtype.itemsize}" if dtype.kind in "biuf" else f"s{dtype.itemsize}"


def _describe(code: str) -> str:
    if code.startswith(("ptr:", "constptr:")):
        pointee = code.split(":", 1)[1]
        constness = "const " if code.startswith("const") else ""
        element = "any dtype" if pointee == "v" else _describe(pointee)
        return f"an array ({constness}pointer to {element})"
    if code in _SCALAR_NAMES:
        return f"numpy.{_SCALAR_NAMES[code]}"
    return f"a {code[1:]}-byte NumPy scalar (a struct by value)"


def _dims(value, what: str) -> tuple[int, int, int]:
    dims = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not 1 <= len(dims) <= 3:
        raise ValueError(f"{what} must have 1 to 3 dimensions, got {value!r}")
    dims = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    if any(not 0 <= d < 2**32 for d in dims):
        raise ValueError(f"{what} dimensions must fit in 32 unsigned bits, got {value!r}")
    return dims


class EmulatedModule:
    """A .cu source compiled by g++ for the CPU, its kernels launched like CuPy's.

    Parameters
    ----------
    code : str
        The CUDA C source, as given to ``cupy.RawModule(code=...)``.
    name_expressions : sequence of str
        The kernels to instantiate and export, as given to CuPy: ``"relu_forward<float>"``,
        ``"conv2d_forward<double, 4, 8>"``, or a plain name for a non-template kernel.
    options : sequence of str
        nvcc options; ``-D``, ``-U`` and ``-I`` are passed to g++, the rest ignored.
    include_dirs : sequence of Path
        Folders searched by ``#include "..."`` (fastcnn's is ``kernels/cuda``).

    The compiled library is cached on disk (keyed by the code, the headers it includes, the
    options, the name expressions and the compiler's version) and memoised per process.

    Examples
    --------
    >>> import numpy as np
    >>> from fastcnn.backends.cuda._emulator import EmulatedModule
    >>> code = '''
    ... extern "C" __global__ void twice(float* x, int n) {
    ...     int i = blockIdx.x * blockDim.x + threadIdx.x;
    ...     if (i < n) x[i] *= 2;
    ... }'''
    >>> module = EmulatedModule(code, ["twice"])
    >>> x = np.arange(5, dtype=np.float32)
    >>> module.launch("twice", (2, 1, 1), (4, 1, 1), (x, np.int32(5)))
    >>> x
    array([0., 2., 4., 6., 8.], dtype=float32)
    """

    def __init__(
        self,
        code: str,
        name_expressions: Sequence[str],
        options: Sequence[str] = (),
        include_dirs: Sequence[Path] = (),
    ):
        if isinstance(name_expressions, str):
            raise TypeError("name_expressions must be a sequence of strings, not one string")
        self.name_expressions = tuple(name_expressions)
        self.path, self._kernels = _load(
            code,
            self.name_expressions,
            tuple(options),
            tuple(Path(directory).resolve() for directory in include_dirs),
        )

    def parameters(self, name_expression: str) -> tuple[str, ...]:
        """The kernel's parameter codes (``"f4"``, ``"ptr:f8"``, ``"constptr:i4"``, ...)."""
        return self._kernel(name_expression).parameters

    def _kernel(self, name_expression: str) -> _Kernel:
        try:
            return self._kernels[name_expression]
        except KeyError:
            raise KeyError(
                f"{name_expression!r} is not among this module's name expressions "
                f"{list(self._kernels)}"
            ) from None

    def launch(
        self,
        name_expression: str,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        args: tuple,
        shared_mem: int = 0,
    ) -> None:
        """Run the kernel over ``grid`` blocks of ``block`` threads, like CuPy's
        ``kernel(grid, block, args, shared_mem=...)``, with the settings of :func:`emulation`.

        ``args`` are C-contiguous NumPy arrays for pointer parameters (their dtype must be the
        pointee type) and NumPy scalars of exactly the parameter type for the others; a plain
        Python number is refused, as CuPy refuses it. Raises RuntimeError if the launch fails
        (a launch limit, a barrier not every thread reaches, ...).
        """
        kernel = self._kernel(name_expression)
        grid_dims = (ctypes.c_uint * 3)(*_dims(grid, "grid"))
        block_dims = (ctypes.c_uint * 3)(*_dims(block, "block"))
        slots, keep = _pack(kernel, args)
        options, _listed = _current_settings().launch_options
        error = ctypes.create_string_buffer(_ERROR_BYTES)
        if shared_mem < 0:
            raise ValueError(f"shared_mem must be non-negative, got {shared_mem}")
        status = kernel.function(
            grid_dims, block_dims, int(shared_mem), slots, options, error, _ERROR_BYTES
        )
        del keep
        if status != 0:
            kind = _ERROR_KINDS.get(status, f"error {status}")
            raise RuntimeError(f"cuda-emu launch failed ({kind}): {error.value.decode()}")


def _pack(kernel: _Kernel, args: tuple) -> tuple[ctypes.Array, list]:
    """``void* args[]``, each pointing at one argument's bytes, and what must stay alive."""
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"args must be a tuple, got {type(args).__name__}")
    if len(args) != len(kernel.parameters):
        raise TypeError(f"{kernel.name} takes {len(kernel.parameters)} arguments, got {len(args)}")
    # 16 bytes per argument: a pointer, or a scalar's bytes (a copy, as CuPy makes).
    storage = np.zeros(2 * max(len(args), 1), dtype=np.uint64)
    base = storage.ctypes.data
    keep: list = [storage]
    addresses = []
    for index, (value, code) in enumerate(zip(args, kernel.parameters, strict=True)):
        where = f"{kernel.name} argument {index}"
        wanted = _describe(code)
        if code.startswith(("ptr:", "constptr:")):
            if not isinstance(value, np.ndarray):
                raise TypeError(f"{where}: expected {wanted}, got {type(value).__name__}")
            pointee = code.split(":", 1)[1]
            if pointee != "v" and _dtype_code(value.dtype) != pointee:
                raise TypeError(f"{where}: expected {wanted}, got a {value.dtype} array")
            if not value.flags.c_contiguous:
                raise ValueError(f"{where}: the array must be C-contiguous")
            if code.startswith("ptr:") and not value.flags.writeable:
                raise ValueError(
                    f"{where}: the kernel may write through this pointer, but the "
                    "array is read-only"
                )
            storage[2 * index] = value.ctypes.data  # even for an empty array, as on a GPU
            keep.append(value)
        else:
            if not isinstance(value, np.generic):
                hint = (
                    f"; pass a NumPy scalar of the kernel's parameter type ({wanted}), as CuPy "
                    "requires"
                    if isinstance(value, (bool, int, float))
                    else ""
                )
                raise TypeError(f"{where}: expected {wanted}, got {type(value).__name__}{hint}")
            if _dtype_code(value.dtype) != code and not (
                code.startswith("s") and value.dtype.itemsize == int(code[1:])
            ):
                raise TypeError(f"{where}: expected {wanted}, got numpy.{value.dtype}")
            data = value.tobytes()
            if len(data) > 16:
                buffer = np.frombuffer(bytearray(data), dtype=np.uint8)
                keep.append(buffer)
                addresses.append(buffer.ctypes.data)
                continue
            storage.view(np.uint8)[16 * index : 16 * index + len(data)] = np.frombuffer(
                data, dtype=np.uint8
            )
        addresses.append(base + 16 * index)
    return (ctypes.c_void_p * max(len(addresses), 1))(*addresses), keep
