"""The machine's ceilings, measured on the spot: peak FLOP/s and memory bandwidth.

- Peak FLOP/s, two ways: a dedicated fused-multiply-add loop (LLVM IR JIT-compiled
  through llvmlite for this CPU: 12 independent vector chains, enough to cover FMA
  latency x throughput on current x86 and Arm cores, so it runs at the FMA units'
  limit), and a large matrix product through NumPy's BLAS (what a tuned library
  reaches). Each on one thread and on all requested threads; the FMA loop runs one
  Python thread per core (ctypes releases the GIL).
- Bandwidth: a copy of a 256 MiB array (far above any cache), counted as bytes read +
  bytes written, split over the threads the same way.

The roofline ceiling of a case is ``min(peak, intensity x bandwidth)`` with
``intensity = flops / bytes`` from the spec's ``cost()``; :func:`roofline` computes it.
On a GPU (CuPy with a device) :func:`measure_gpu_ceilings` does the same with CuPy.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np

#: Independent accumulators in the FMA loop: 4-cycle latency x 2 FMA units = 8 needed.
FMA_CHAINS = 12
#: Bytes per array in the copy-bandwidth test (read one, write the other).
COPY_BYTES = 256 * 2**20
#: Matrix size of the GEMM test.
GEMM_SIZE = 2048


def _vector_bits(features: str) -> int:
    if "+avx512f" in features:
        return 512
    if "+avx" in features:
        return 256
    return 128


def _fma_loop_ir(element: str, lanes: int, chains: int) -> str:
    """LLVM IR of ``fma_loop(iterations) -> element``: ``chains`` vector FMAs per iteration."""
    vector = f"<{lanes} x {element}>"
    bits = lanes * (32 if element == "float" else 64)
    suffix = f"v{lanes}{'f32' if element == 'float' else 'f64'}"
    lines = [
        f"declare {vector} @llvm.fma.{suffix}({vector}, {vector}, {vector})",
        f"define {element} @fma_loop(i64 %iterations, {element} %m, {element} %c) #0 {{",
        "entry:",
        f"  %m0 = insertelement {vector} undef, {element} %m, i32 0",
        f"  %mv = shufflevector {vector} %m0, {vector} undef, <{lanes} x i32> zeroinitializer",
        f"  %c0 = insertelement {vector} undef, {element} %c, i32 0",
        f"  %cv = shufflevector {vector} %c0, {vector} undef, <{lanes} x i32> zeroinitializer",
        "  br label %loop",
        "loop:",
        "  %i = phi i64 [0, %entry], [%next, %loop]",
    ]
    lines += [f"  %a{k} = phi {vector} [%cv, %entry], [%b{k}, %loop]" for k in range(chains)]
    lines += [
        f"  %b{k} = call {vector} @llvm.fma.{suffix}({vector} %a{k}, {vector} %mv, {vector} %cv)"
        for k in range(chains)
    ]
    lines += [
        "  %next = add i64 %i, 1",
        "  %done = icmp uge i64 %next, %iterations",
        "  br i1 %done, label %exit, label %loop",
        "exit:",
    ]
    total = "%b0"
    for k in range(1, chains):
        lines.append(f"  %s{k} = fadd {vector} {total}, %b{k}")
        total = f"%s{k}"
    lines += [
        f"  %r = extractelement {vector} {total}, i32 0",
        f"  ret {element} %r",
        "}",
        # Without these, LLVM splits 512-bit vectors in two on CPUs where it prefers 256.
        f'attributes #0 = {{ "min-legal-vector-width"="{bits}" "prefer-vector-width"="{bits}" }}',
    ]
    return "\n".join(lines)


@cache
def _fma_kernel(dtype: str) -> tuple[Callable[[int, float, float], float], int]:
    """The compiled FMA loop for ``dtype`` and the FLOPs one iteration does."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    features = llvm.get_host_cpu_features().flatten()
    element, element_bits = ("float", 32) if dtype == "float32" else ("double", 64)
    lanes = _vector_bits(features) // element_bits
    module = llvm.parse_assembly(_fma_loop_ir(element, lanes, FMA_CHAINS))
    module.verify()
    machine = llvm.Target.from_default_triple().create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=features, opt=3
    )
    engine = llvm.create_mcjit_compiler(module, machine)
    engine.finalize_object()
    c_type = ctypes.c_float if element == "float" else ctypes.c_double
    function = ctypes.CFUNCTYPE(c_type, ctypes.c_int64, c_type, c_type)(
        engine.get_function_address("fma_loop")
    )
    function._engine = engine  # keep the machine code alive as long as the function
    return function, 2 * lanes * FMA_CHAINS


def _best_parallel_seconds(work: Callable[[int], object], threads: int, repeats: int) -> float:
    """Best wall time of ``threads`` concurrent ``work(i)`` calls, over ``repeats`` tries."""
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(work, range(threads)))
            best = min(best, time.perf_counter() - start)
    return best


def fma_peak(dtype: str = "float32", threads: int = 1, seconds: float = 0.1) -> float:
    """Peak FLOP/s of the dedicated FMA loop on ``threads`` threads."""
    function, flops_per_iteration = _fma_kernel(dtype)
    iterations = 100_000
    start = time.perf_counter()
    function(iterations, 0.999, 0.001)
    elapsed = max(time.perf_counter() - start, 1e-6)
    iterations = max(iterations, int(iterations * seconds / elapsed))
    best = _best_parallel_seconds(lambda _: function(iterations, 0.999, 0.001), threads, 3)
    return threads * iterations * flops_per_iteration / best


def gemm_peak(dtype: str = "float32", threads: int = 1, size: int = GEMM_SIZE) -> float:
    """FLOP/s of a ``size`` x ``size`` matrix product through NumPy's BLAS on ``threads``."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(dtype)
    b = rng.standard_normal((size, size)).astype(dtype)
    c = np.empty_like(a)
    with threadpool_limits(threads, user_api="blas"):
        np.matmul(a, b, out=c)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            np.matmul(a, b, out=c)
            best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def copy_bandwidth(threads: int = 1, nbytes: int = COPY_BYTES) -> float:
    """Bytes/s (read + write) of a large array copy split over ``threads`` threads."""
    source = np.ones(nbytes // 4, np.float32)
    target = np.empty_like(source)
    target.fill(0)  # fault the pages in before timing
    bounds = np.linspace(0, source.size, threads + 1).astype(int)

    def copy_part(i: int) -> None:
        np.copyto(target[bounds[i] : bounds[i + 1]], source[bounds[i] : bounds[i + 1]])

    best = _best_parallel_seconds(copy_part, threads, 5)
    return 2 * source.nbytes / best


def measure_cpu_ceilings(dtype: str, threads: int) -> dict:
    """The CPU ceilings on one thread and on ``threads`` threads (see the module docstring)."""
    counts = sorted({1, threads})
    peaks: dict[str, dict[str, float]] = {"fma": {}, "gemm": {}}
    bandwidth: dict[str, dict[str, float]] = {"copy": {}}
    errors = []
    for count in counts:
        try:
            peaks["fma"][str(count)] = fma_peak(dtype, count)
        except Exception as error:  # llvmlite missing or a CPU it cannot target
            errors.append(f"fma loop: {type(error).__name__}: {error}")
        peaks["gemm"][str(count)] = gemm_peak(dtype, count)
        bandwidth["copy"][str(count)] = copy_bandwidth(count)
    top = str(threads)
    peak = max(peaks["fma"].get(top, 0.0), peaks["gemm"][top])
    return {
        "device": "cpu",
        "dtype": dtype,
        "threads": threads,
        "peak_flops": peaks,
        "bandwidth_bytes_per_s": bandwidth,
        "roofline": {"peak_flops": peak, "bandwidth_bytes_per_s": bandwidth["copy"][top]},
        "errors": errors,
    }


def gpu_available() -> bool:
    """Whether CuPy is installed and sees a CUDA device."""
    try:
        import cupy
    except ImportError:
        return False
    try:
        return bool(cupy.is_available())
    except Exception:
        return False


def measure_gpu_ceilings(dtype: str) -> dict | None:
    """GEMM FLOP/s and copy bandwidth on the GPU (CuPy, CUDA events); ``None`` without one."""
    if not gpu_available():
        return None
    import cupy

    from fastcnn.bench.timing import CudaEventClock

    clock = CudaEventClock()
    size = 8192
    a = cupy.random.standard_normal((size, size), dtype=np.float64).astype(dtype)
    b = cupy.random.standard_normal((size, size), dtype=np.float64).astype(dtype)
    c = cupy.empty_like(a)
    cupy.matmul(a, b, out=c)
    gemm = 2 * size**3 / min(clock.time(lambda: cupy.matmul(a, b, out=c)) for _ in range(5))
    source = cupy.ones(2**30 // 4, cupy.float32)
    target = cupy.empty_like(source)
    target[...] = source
    copy = (
        2
        * source.nbytes
        / min(clock.time(lambda: target.__setitem__(..., source)) for _ in range(5))
    )
    properties = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    return {
        "device": "gpu",
        "name": properties["name"].decode()
        if isinstance(properties["name"], bytes)
        else properties["name"],
        "dtype": dtype,
        "peak_flops": {"gemm": {"gpu": gemm}},
        "bandwidth_bytes_per_s": {"copy": {"gpu": copy}},
        "roofline": {"peak_flops": gemm, "bandwidth_bytes_per_s": copy},
        "errors": [],
    }


def roofline(flops: float, nbytes: float, peak_flops: float, bandwidth: float) -> tuple[float, str]:
    """The attainable FLOP/s of a kernel doing ``flops`` on ``nbytes``, and what bounds it.

    >>> roofline(100.0, 100.0, peak_flops=1e12, bandwidth=1e10)
    (10000000000.0, 'memory')
    """
    memory_limit = flops / nbytes * bandwidth if nbytes else float("inf")
    if memory_limit < peak_flops:
        return memory_limit, "memory"
    return peak_flops, "compute"
