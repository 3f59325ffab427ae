"""Machine and build facts: show_config(), set_num_threads()."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

from fastcnn.backends import INSTALL_HINTS, backend_status, ops_of

_CPU_FEATURES = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512dq",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "neon",
    "asimd",
    "sve",
)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_features() -> list[str]:
    """The SIMD features of this CPU that matter to the kernels (Linux /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in _CPU_FEATURES if f in flags]
    except OSError:
        pass
    return []


def cpu_name() -> str:
    try:
        import llvmlite.binding as llvm

        return llvm.get_host_cpu_name()
    except Exception:
        return platform.processor() or platform.machine()


def thread_info() -> dict[str, object]:
    info: dict[str, object] = {"cpu_count": os.cpu_count(), "cpp_threads": num_threads()}
    try:
        from fastcnn import _cpp

        info["cpp_simd"] = _cpp.simd_path()
    except ImportError:
        pass
    try:
        import numba

        info["numba_threads"] = numba.get_num_threads()
        info["numba_threading_layer"] = numba.config.THREADING_LAYER
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [
            f"{p['internal_api']} {p.get('version')} ({p['num_threads']} threads)"
            for p in threadpool_info()
            if p.get("user_api") == "blas"
        ]
    except ImportError:
        pass
    return info


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


#: The thread count of the C++ kernels, passed with every call (None: usable_cores()).
_threads: int | None = None


def num_threads() -> int:
    """The threads fastcnn's C++ kernels use (:func:`set_num_threads`, else every core)."""
    return _threads or usable_cores()


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in Numba's parallel kernels, the C++ kernels and BLAS together.

    Numba cannot go above the ``NUMBA_NUM_THREADS`` it started with (the core count
    by default).
    """
    global _threads
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    _threads = n
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n, user_api="blas")
    except ImportError:
        pass


def config_text() -> str:
    """What show_config() prints."""
    from fastcnn import __version__

    lines = [
        f"fastcnn {__version__}",
        f"python {sys.version.split()[0]} ({platform.platform()})",
        "packages: "
        + ", ".join(f"{p} {_version(p)}" for p in ("numpy", "numba", "scipy", "cupy", "torch")),
        "backends:",
    ]
    for name, (available, reason) in backend_status().items():
        if available:
            lines.append(f"  {name:<10} available: {len(ops_of(name))} ops")
        else:
            lines.append(f"  {name:<10} missing: {reason}; to get it: {INSTALL_HINTS[name]}")
    lines.append(f"cpu: {cpu_name()}; features: {' '.join(cpu_features()) or 'unknown'}")
    for key, value in thread_info().items():
        lines.append(f"{key}: {value}")
    return "\n".join(lines)


def show_config() -> None:
    """Print versions, backends (and why any is missing), threads and CPU features."""
    print(config_text())
