"""One prepared check of a GPU machine: the device, the spec suite on it, and its speed.

``python -m fastcnn.gpucheck [--quick] [--json PATH] [--skip-bench] [--timeout SECONDS]``

Made for a machine with CuPy and an NVIDIA GPU but no network, to finish in under five
minutes and print one report:

1. **Device.** Name, compute capability, SMs, memory and L2; CuPy, CUDA runtime and
   driver versions; PyTorch, its CUDA and cuDNN where installed.
2. **Spec suite** on backend ``cuda``: every spec of :data:`fastcnn.testing.specs.SPECS`,
   every case, once per algorithm that takes it
   (:func:`fastcnn.testing.harness.algorithm_cases`), float32 and float64, forward and
   backward, each against the float64 reference (``check_forward`` /
   ``check_backward``, which move the inputs with ``to_device``). A plain function,
   :func:`run_suite`, not pytest: it runs without the test tree. The memory layouts of
   the harness apply to NumPy arrays only, so the GPU runs the contiguous one.
3. **Ceilings and bench.** Device copy bandwidth (a 1 GiB CuPy copy, CUDA events, median
   of many runs, bytes read + written) and the FP32 FMA peak (a raw CUDA kernel of
   independent FMA chains through ``cupy.RawKernel``; skipped with a note if it does not
   compile). Then ``fastcnn bench``'s runner times backend ``cuda`` on the ResNet-50
   convolutions and the memory-bound ops at batch 32 (``--quick``: the quick suite). The
   bench's own peer runs PyTorch on the CPU, so the cuDNN peer is timed here, in this
   process, with the bench's call preparation (``prepare_torch(device="cuda")``), its
   CUDA-event clock and the same input rotation, TF32 off
   (``torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False``)
   and ``cudnn.benchmark`` on (cuDNN's best algorithm per shape). Each row gives
   torch/ours (> 1: fastcnn is faster), GFLOP/s or GB/s (by the roofline's bound) and the
   percentage of the roofline of the measured ceilings.
4. **CPU vs GPU.** The bench's comparison (:func:`fastcnn.bench.runner.gpu_comparison`):
   the small-channel LeNet/CIFAR convolutions on the best CPU backend and on ``cuda``,
   with and without host<->device copies, and the crossover batch (the smallest power of
   two at which the GPU with copies wins).

``--timeout`` (default :data:`DEFAULT_TIMEOUT_S`) stops starting new parts, and new checks
or measurements inside a part, once that many seconds have passed; what was skipped is
listed. Exit status: 0 when the whole suite ran and passed, 1 otherwise, 2 when CuPy or a
GPU is missing (one line says which).

Examples
--------
The suite runner takes any backend (here the float64 reference, checked against itself):

>>> result = run_suite("reference", specs=["relu"], max_cases=1, dtypes=("float32",))
>>> (result.passed, result.failed, result.ok)
(2, 0, True)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

#: Exit statuses.
EXIT_PASSED, EXIT_FAILED, EXIT_NO_GPU = 0, 1, 2
#: The suite's dtypes and directions.
DTYPES = ("float32", "float64")
DIRECTIONS = ("forward", "backward")
#: Seconds after which no new part, check or measurement starts (the whole must stay
#: under five minutes; one measurement or check may still finish after it).
DEFAULT_TIMEOUT_S = 270.0
#: Cases per spec with ``--quick`` (the first ones of the table: the small, plain ones).
QUICK_CASES = 3
#: Failures printed in full (all of them go to ``--json``).
FAILURES_SHOWN = 10
#: The bench: batch, suites, and the timing budget per measurement (normal, quick).
BENCH_BATCH = 32
BENCH_SUITES = ("resnet50", "memory")
QUICK_BENCH_SUITES = ("quick",)
BENCH_TIMING = {"min_time": 0.2, "max_runs": 30}
QUICK_BENCH_TIMING = {"min_time": 0.05, "max_runs": 10}
#: The CPU vs GPU comparison: the bench suite and op it runs, and the CPU backends to try.
CROSSOVER_SUITE, CROSSOVER_OPS = "lenet", ("conv2d",)
CROSSOVER_CPU_BACKENDS = ("numba", "cpp")
CROSSOVER_TIMING = {"min_time": 0.05, "max_runs": 10}
#: Bytes of each of the two arrays in the copy-bandwidth test (far above any L2), and runs.
COPY_BYTES = 2**30
COPY_RUNS = 30
#: The FMA loop: chains per thread, iterations per launch, threads per block, runs.
FMA_CHAINS = 8
FMA_ITERATIONS = 2048
FMA_THREADS = 256
FMA_RUNS = 10

#: Eight independent FMA chains per thread cover the FMA latency (4 cycles on Hopper) with
#: several warps per scheduler; the outer unroll keeps the loop counter's add, compare and
#: branch to 3 instructions per 64 FFMA, so the FP32 pipes stay nearly full.
FMA_SOURCE = r"""
extern "C" __global__ void fma_loop(float* out, int iterations, float multiplier, float addend) {
    float a[FMA_CHAINS];
    #pragma unroll
    for (int k = 0; k < FMA_CHAINS; ++k) a[k] = threadIdx.x * 1e-3f + k;
    #pragma unroll 8
    for (int i = 0; i < iterations; ++i) {
        #pragma unroll
        for (int k = 0; k < FMA_CHAINS; ++k) a[k] = fmaf(a[k], multiplier, addend);
    }
    float sum = 0.0f;
    #pragma unroll
    for (int k = 0; k < FMA_CHAINS; ++k) sum += a[k];
    out[blockIdx.x * blockDim.x + threadIdx.x] = sum;
}
"""


def _log(message: str) -> None:
    """A progress line on stderr (the report itself goes to stdout at the end)."""
    print(f"gpucheck: {message}", file=sys.stderr, flush=True)


@dataclass
class Deadline:
    """When to stop starting new work: ``seconds`` after creation (None: never)."""

    seconds: float | None
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def passed(self) -> bool:
        return self.seconds is not None and self.elapsed() >= self.seconds


# --- 0. is there a GPU ------------------------------------------------------------------


def missing_gpu() -> str | None:
    """What is missing for backend ``cuda`` (CuPy, a device, the backend), or None.

    Examples
    --------
    >>> missing_gpu() is None or isinstance(missing_gpu(), str)
    True
    """
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed (pip install 'fastcnn[cuda]'); this check needs a GPU"
    try:
        available = bool(cupy.is_available())
    except Exception as error:  # a broken driver can raise instead of answering False
        return f"CuPy cannot reach a CUDA device ({type(error).__name__}: {error})"
    if not available:
        return "CuPy found no usable CUDA device (cupy.is_available() is False)"
    from fastcnn.backends import BackendUnavailableError, check_backend_name

    try:
        check_backend_name("cuda")
    except BackendUnavailableError as error:
        return str(error)
    return None


# --- 1. the device ----------------------------------------------------------------------


def _cuda_version(number: int) -> str:
    """``12040`` -> ``"12.4"`` (how the CUDA runtime reports versions)."""
    return f"{number // 1000}.{number % 1000 // 10}"


def _driver_version() -> str | None:
    """The driver's own version (``550.54.15``) from nvidia-smi, where it is on the PATH."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        output = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return output.strip().splitlines()[0] if output.strip() else None


def device_report() -> dict:
    """The current CUDA device and the versions of everything that runs on it."""
    import cupy

    device = cupy.cuda.Device()
    properties = cupy.cuda.runtime.getDeviceProperties(device.id)
    name = properties["name"]
    report = {
        "name": name.decode() if isinstance(name, bytes) else str(name),
        "id": device.id,
        "compute_capability": f"{properties['major']}.{properties['minor']}",
        "sms": properties["multiProcessorCount"],
        "memory_bytes": properties["totalGlobalMem"],
        "l2_bytes": properties.get("l2CacheSize"),
        "cupy": cupy.__version__,
        "cuda_runtime": _cuda_version(cupy.cuda.runtime.runtimeGetVersion()),
        "driver_cuda": _cuda_version(cupy.cuda.runtime.driverGetVersion()),
        "driver": _driver_version(),
        "torch": None,
        "torch_cuda": None,
        "cudnn": None,
    }
    try:
        import torch
    except ImportError:
        return report
    report["torch"] = torch.__version__
    report["torch_cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    if torch.cuda.is_available() and torch.backends.cudnn.is_available():
        report["cudnn"] = torch.backends.cudnn.version()
    return report


# --- 2. the spec suite ------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One check of the suite: a spec case (with its algorithm) in one direction and dtype."""

    spec: object
    case: object
    direction: str
    dtype: str
    layout: str = "contiguous"

    @property
    def algo(self) -> str | None:
        algo = self.case.params.get("algo")
        return algo if algo is None or isinstance(algo, str) else "+".join(algo)


@dataclass
class Failure:
    """A failed check: what ran, the seed that reproduces it, and the error's first lines."""

    spec: str
    case: str
    direction: str
    dtype: str
    algo: str | None
    layout: str
    seed: list[int]
    message: str

    def line(self) -> str:
        algo = f" algo={self.algo}" if self.algo else ""
        return (
            f"{self.spec} {self.case!r} {self.direction} {self.dtype}{algo} "
            f"(seed {self.seed}): {self.message}"
        )


@dataclass
class SuiteResult:
    """Counts per spec, the failures, the ops the backend lacks, and whether it ran to the end."""

    backend: str
    passed: int = 0
    failed: int = 0
    per_spec: dict[str, list[int]] = field(default_factory=dict)  # name -> [passed, failed]
    failures: list[Failure] = field(default_factory=list)
    not_implemented: list[str] = field(default_factory=list)
    incomplete: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every check ran and passed (and there was at least one)."""
        return self.failed == 0 and not self.incomplete and self.passed > 0

    def to_json(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def suite_checks(
    backend: str,
    specs: Sequence[str] | None = None,
    max_cases: int | None = None,
    dtypes: Sequence[str] = DTYPES,
    layouts: Sequence[str] = ("contiguous",),
    not_implemented: list[str] | None = None,
) -> Iterator[Check]:
    """Every check of the suite on ``backend``, spec by spec (ops it lacks go into
    ``not_implemented``)."""
    from fastcnn.backends import has_op
    from fastcnn.testing.harness import algorithm_cases
    from fastcnn.testing.specs import SPECS, SPECS_BY_NAME

    selected = SPECS if specs is None else [SPECS_BY_NAME[name] for name in specs]
    for spec in selected:
        cases = spec.cases if max_cases is None else spec.cases[:max_cases]
        for direction, op in zip(DIRECTIONS, spec.ops, strict=True):
            if op is None:
                continue
            if not has_op(op, backend):
                if not_implemented is not None:
                    not_implemented.append(op)
                continue
            for case in cases:
                for variant in algorithm_cases(spec, case, backend, direction):
                    for dtype in dtypes:
                        for layout in layouts:
                            yield Check(spec, variant, direction, dtype, layout)


def _first_lines(error: BaseException, lines: int = 3, characters: int = 400) -> str:
    text = " | ".join(str(error).strip().splitlines()[:lines])
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= characters else text[: characters - 3] + "..."


def run_suite(
    backend: str = "cuda",
    *,
    specs: Sequence[str] | None = None,
    max_cases: int | None = None,
    dtypes: Sequence[str] = DTYPES,
    layouts: Sequence[str] = ("contiguous",),
    seed: int = 0,
    deadline: Deadline | None = None,
    verbose: bool = False,
) -> SuiteResult:
    """Run the spec suite on ``backend`` against the float64 reference.

    Parameters
    ----------
    backend : str
        The backend to check (default ``"cuda"``; ``"cuda-emu"`` runs the same kernels on
        the CPU).
    specs : sequence of str, optional
        Spec names to run (default: all of :data:`fastcnn.testing.specs.SPECS`).
    max_cases : int, optional
        Run only each spec's first ``max_cases`` cases (``--quick``).
    dtypes : sequence of str
        Float dtypes to run each case in.
    layouts : sequence of str
        Memory layouts of the inputs (``fastcnn.testing.compare.LAYOUTS``; they change
        NumPy arrays only).
    seed : int
        Check number ``i`` draws its inputs from ``numpy.random.default_rng([seed, i])``;
        a failure records that pair.
    deadline : Deadline, optional
        No check starts after it passes; the result is then marked ``incomplete``.
    verbose : bool
        Print a progress line per spec to stderr.

    Returns
    -------
    SuiteResult
        Passes and failures, per spec and in total, and each failure's first lines.

    Examples
    --------
    >>> result = run_suite("reference", specs=["sigmoid"], max_cases=2, dtypes=("float64",))
    >>> result.per_spec
    {'sigmoid': [4, 0]}
    """
    from fastcnn.backends import check_backend_name
    from fastcnn.testing.harness import check_backward, check_forward

    check_backend_name(backend)
    run = {"forward": check_forward, "backward": check_backward}
    result = SuiteResult(backend)
    started = time.perf_counter()
    current = None
    checks = suite_checks(backend, specs, max_cases, dtypes, layouts, result.not_implemented)
    for index, check in enumerate(checks):
        if deadline is not None and deadline.passed():
            result.incomplete = True
            break
        if verbose and check.spec.name != current:
            current = check.spec.name
            _log(f"suite on {backend}: {current} ({time.perf_counter() - started:.0f} s)")
        counts = result.per_spec.setdefault(check.spec.name, [0, 0])
        rng = np.random.default_rng([seed, index])
        try:
            with np.errstate(all="ignore"):  # the reference meets NaN and inf on purpose
                run[check.direction](
                    check.spec, check.case, backend, check.dtype, check.layout, rng
                )  # fmt: skip
        except Exception as error:  # every failure is counted and reported, none stops it
            counts[1] += 1
            result.failed += 1
            result.failures.append(
                Failure(
                    check.spec.name, check.case.name, check.direction, check.dtype,
                    check.algo, check.layout, [seed, index], _first_lines(error),
                )
            )  # fmt: skip
        else:
            counts[0] += 1
            result.passed += 1
    result.seconds = time.perf_counter() - started
    return result


# --- 3. ceilings and bench --------------------------------------------------------------


def copy_bandwidth(nbytes: int = COPY_BYTES, runs: int = COPY_RUNS) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write), median of ``runs``."""
    import cupy

    from fastcnn.bench.timing import CudaEventClock

    clock = CudaEventClock()
    source = cupy.ones(nbytes // 4, cupy.float32)
    target = cupy.zeros_like(source)

    def copy():
        cupy.copyto(target, source)

    copy()  # warm-up
    seconds = statistics.median(clock.time(copy) for _ in range(runs))
    source = target = None  # free the 2 GiB before the bench
    cupy.get_default_memory_pool().free_all_blocks()
    return 2 * nbytes / seconds


def fma_peak(runs: int = FMA_RUNS) -> float:
    """FP32 FLOP/s of :data:`FMA_SOURCE` filling every SM, median of ``runs`` launches."""
    import cupy

    from fastcnn.bench.timing import CudaEventClock

    kernel = cupy.RawKernel(FMA_SOURCE, "fma_loop", options=(f"-DFMA_CHAINS={FMA_CHAINS}",))
    properties = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    per_sm = properties["maxThreadsPerMultiProcessor"] // FMA_THREADS
    blocks = properties["multiProcessorCount"] * per_sm
    out = cupy.empty(blocks * FMA_THREADS, cupy.float32)
    arguments = (out, np.int32(FMA_ITERATIONS), np.float32(0.999), np.float32(0.001))

    def launch():
        kernel((blocks,), (FMA_THREADS,), arguments)

    launch()  # compile and warm up
    clock = CudaEventClock()
    seconds = statistics.median(clock.time(launch) for _ in range(runs))
    return 2 * FMA_CHAINS * FMA_ITERATIONS * blocks * FMA_THREADS / seconds


def measure_ceilings() -> dict:
    """Copy bandwidth and FMA peak; a ceiling that cannot be measured is None with a note."""
    ceilings: dict = {"copy_bytes_per_s": None, "fma_flops_per_s": None, "notes": []}
    for key, measure in (("copy_bytes_per_s", copy_bandwidth), ("fma_flops_per_s", fma_peak)):
        try:
            ceilings[key] = measure()
        except Exception as error:  # e.g. NVRTC missing: the bench's GEMM ceiling stands in
            ceilings["notes"].append(f"{key} skipped: {_first_lines(error, 1)}")
    return ceilings


class _DeadlineProgress:
    """The bench runner's progress: one stderr line per measurement; once the deadline
    passes it stops the run the way Ctrl-C does (``runner.run`` catches the
    KeyboardInterrupt and returns what it measured, marked ``interrupted``)."""

    def __init__(self, deadline: Deadline, label: str) -> None:
        self.deadline = deadline
        self.label = label
        self.done = 0
        self.total = 0

    def start(self, total: int, description: str) -> None:
        self.total = total

    def advance(self, task, result: dict) -> None:
        self.done += 1
        name = "ceilings" if task is None else f"{task.op} {task.case} {task.direction}"
        outcome = (
            f"{result['median_s'] * 1e3:.3g} ms"
            if "median_s" in result
            else result.get("status", "?")
        )
        _log(f"{self.label} [{self.done}/{self.total}] {name}: {outcome}")
        if self.deadline.passed():
            raise KeyboardInterrupt

    def close(self) -> None:
        pass


def run_bench(
    suite: str,
    backends: Sequence[str],
    deadline: Deadline,
    *,
    batch: int | None = BENCH_BATCH,
    ops: Sequence[str] | None = None,
    directions: tuple[str, ...] = ("fwd", "bwd"),
    min_time: float = BENCH_TIMING["min_time"],
    max_runs: int = BENCH_TIMING["max_runs"],
    crossover: bool = False,
) -> dict:
    """One ``fastcnn bench`` run (its runner, called as the CLI would), without its CPU peer."""
    from fastcnn.bench.runner import BenchSettings
    from fastcnn.bench.runner import run as run_benchmark

    settings = BenchSettings(
        suite=suite,
        ops=list(ops) if ops else None,
        backends=list(backends),
        batch=batch,
        directions=directions,
        min_time=min_time,
        min_runs=min(3, max_runs),
        max_runs=max_runs,
        vs="none",
        gpu_crossover=crossover,
    )
    command = f"fastcnn bench --suite {suite} --backends {','.join(backends)} --vs none" + (
        f" --batch {batch}" if batch else ""
    )
    return run_benchmark(settings, _DeadlineProgress(deadline, suite), command=command)


def configure_torch_peer():
    """PyTorch on the GPU as the peer: FP32 without TF32, cuDNN's autotuner on. Returns
    the module, or raises RuntimeError when PyTorch has no CUDA."""
    try:
        import torch
    except ImportError:
        raise RuntimeError("PyTorch is not installed: no cuDNN peer") from None
    if not torch.cuda.is_available():
        raise RuntimeError(f"PyTorch {torch.__version__} has no CUDA here: no cuDNN peer")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    return torch


def time_peer(
    records: Sequence[dict],
    deadline: Deadline,
    min_time: float,
    max_runs: int,
    device: str = "cuda",
) -> dict[str, dict]:
    """PyTorch for every fastcnn result of ``records``: ``{case_key: summary}`` (no
    ``times_s``; ``{"error": ...}`` where the peer failed), with the bench's inputs and
    rotation count; on ``device`` ``"cuda"`` (:func:`configure_torch_peer`, CUDA events)
    or ``"cpu"`` (the wall clock: for testing this function without a GPU)."""
    from fastcnn.bench import timing
    from fastcnn.bench.calls import prepare_torch
    from fastcnn.bench.cases import PEER, resolve_case

    if device == "cuda":
        torch = configure_torch_peer()
        clock = timing.CudaEventClock()
    else:
        import torch

        clock = timing.WallClock()
    peer: dict[str, dict] = {}
    for record in records:
        if record["library"] == PEER or record.get("kind", "op") != "op":
            continue
        if record["case_key"] in peer or deadline.passed():
            continue
        spec, case = resolve_case(record["op"], record["source"], record["case"], record["batch"])
        if spec.torch_forward is None:
            continue
        direction = record["direction"]
        prepared = None
        try:
            prepared = prepare_torch(
                spec, case, direction, record["dtype"], record.get("input_sets", 2), device
            )
            measured = timing.measure(
                prepared.first_call,
                prepared.timed_call,
                prepared.input_sets,
                clock=clock,
                min_time=min_time,
                min_runs=min(3, max_runs),
                max_runs=max_runs,
            )
        except Exception as error:  # the peer's failure is a note, not ours
            peer[record["case_key"]] = {"error": _first_lines(error, 1)}
        else:
            summary = measured.summary()
            summary.pop("times_s")
            peer[record["case_key"]] = summary
            name = f"{record['op']} {record['case']} {direction}"
            _log(f"torch on {device} {name}: {summary['median_s'] * 1e3:.3g} ms")
        del prepared
        if device == "cuda":
            torch.cuda.empty_cache()
    return peer


def bench_rows(documents: Sequence[dict], peer: dict, ceilings: dict) -> list[dict]:
    """One row per fastcnn result: ours, the peer, torch/ours, rate and % of the roofline
    of the measured ceilings (the bench's GEMM ceiling where the FMA peak is missing)."""
    from fastcnn.bench.ceilings import roofline

    rows = []
    for document in documents:
        gpu = (document.get("ceilings") or {}).get("gpu") or {}
        peak = ceilings.get("fma_flops_per_s") or gpu.get("roofline", {}).get("peak_flops")
        bandwidth = ceilings.get("copy_bytes_per_s") or gpu.get("roofline", {}).get(
            "bandwidth_bytes_per_s"
        )
        for result in document["results"]:
            if result["library"] != "fastcnn":
                continue
            row = {
                "case": f"{result['op']} {result['case']} N{result['batch']}",
                "direction": result["direction"],
                "variant": result["variant"]
                + (
                    f" ({result['ran']})"
                    if result.get("ran") not in (None, result.get("algo"))
                    else ""
                ),
                "ours_s": result.get("median_s") if result["status"] == "ok" else None,
                "error": result.get("error"),
                "torch_s": None,
                "ratio": None,
                "bound": None,
                "rate": None,
                "unit": None,
                "roofline_fraction": None,
            }
            theirs = peer.get(result["case_key"], {})
            row["torch_s"] = theirs.get("median_s")
            if row["ours_s"] and row["torch_s"]:
                row["ratio"] = row["torch_s"] / row["ours_s"]
            if row["ours_s"] and peak and bandwidth:
                ceiling, bound = roofline(result["flops"], result["bytes"], peak, bandwidth)
                row["bound"] = bound
                if bound == "compute":
                    row["rate"], row["unit"] = result["flops"] / row["ours_s"], "GFLOP/s"
                else:
                    row["rate"], row["unit"] = result["bytes"] / row["ours_s"], "GB/s"
                row["roofline_fraction"] = result["flops"] / row["ours_s"] / ceiling
            rows.append(row)
    return rows


def crossover_rows(document: dict) -> list[dict]:
    """The bench's CPU vs GPU comparison, one row per case."""
    return [
        {
            "case": c["case_key"],
            "cpu_variant": c["cpu_variant"],
            "gpu_variant": c["gpu_variant"],
            "gpu_speedup": c["gpu_speedup"],
            "gpu_speedup_with_copies": c["gpu_speedup_with_copies"],
            "crossover_batch": c.get("crossover_batch"),
        }
        for c in document.get("gpu_vs_cpu") or []
    ]


# --- the whole check --------------------------------------------------------------------


def _free_gpu_memory() -> None:
    """Give CuPy's cached blocks back, so the bench's worker processes find the memory."""
    try:
        import cupy
    except ImportError:  # run_check on cuda-emu (tests)
        return
    cupy.get_default_memory_pool().free_all_blocks()
    cupy.get_default_pinned_memory_pool().free_all_blocks()


def run_check(
    quick: bool = False,
    skip_bench: bool = False,
    timeout: float | None = DEFAULT_TIMEOUT_S,
    backend: str = "cuda",
) -> dict:
    """Every part in order, each started only before the deadline; the JSON-able report."""
    deadline = Deadline(timeout)
    report: dict = {
        "backend": backend,
        "quick": quick,
        "timeout_s": timeout,
        "device": None,
        "suite": None,
        "ceilings": None,
        "bench": None,
        "crossover": None,
        "bench_documents": [],
        "skipped": [],
        "notes": [],
    }
    timing = QUICK_BENCH_TIMING if quick else BENCH_TIMING
    parts = [
        ("device", lambda: report.update(device=device_report())),
        (
            "suite",
            lambda: report.update(
                suite=run_suite(
                    backend,
                    max_cases=QUICK_CASES if quick else None,
                    deadline=deadline,
                    verbose=True,
                ).to_json()
            ),
        ),
    ]
    if not skip_bench:
        parts += [
            ("ceilings", lambda: report.update(ceilings=measure_ceilings())),
            ("bench", lambda: _bench_part(report, deadline, quick, timing)),
            ("cpu vs gpu", lambda: _crossover_part(report, deadline)),
        ]
    else:
        report["notes"].append("--skip-bench: no ceilings, bench or CPU vs GPU comparison")
    for name, part in parts:
        if deadline.passed():
            report["skipped"].append(name)
            continue
        _log(f"{name} ({deadline.elapsed():.0f} s)")
        try:
            part()
        except Exception as error:  # one part's failure must not lose the others
            report["notes"].append(f"{name} failed: {_first_lines(error, 2)}")
        if name in ("suite", "bench"):
            _free_gpu_memory()
    suite = report["suite"]
    if suite and suite["incomplete"]:
        report["notes"].append(f"the suite stopped at the --timeout of {timeout:g} s")
    report["seconds"] = deadline.elapsed()
    report["exit_status"] = EXIT_PASSED if suite and suite["ok"] else EXIT_FAILED
    return report


def _bench_part(report: dict, deadline: Deadline, quick: bool, timing: dict) -> None:
    suites = QUICK_BENCH_SUITES if quick else BENCH_SUITES
    documents = report["bench_documents"]
    for suite in suites:
        if deadline.passed():
            report["skipped"].append(f"bench {suite}")
            continue
        document = run_bench(suite, [report["backend"]], deadline, **timing)
        documents.append(document)
        report["notes"] += [f"bench {suite}: {note}" for note in document["notes"]]
        if document["interrupted"]:
            report["notes"].append(f"bench {suite} stopped at the --timeout")
    records = [r for document in documents for r in document["results"]]
    try:
        peer = time_peer(records, deadline, timing["min_time"], timing["max_runs"])
    except RuntimeError as error:
        report["notes"].append(str(error))
        peer = {}
    errors = [f"torch {key}: {p['error']}" for key, p in peer.items() if "error" in p]
    report["notes"] += errors
    if deadline.passed() and len(peer) < len({r["case_key"] for r in records}):
        report["notes"].append("the cuDNN peer stopped at the --timeout")
    report["bench"] = bench_rows(documents, peer, report["ceilings"] or {})


def _crossover_part(report: dict, deadline: Deadline) -> None:
    from fastcnn.backends import available_backends

    cpu = [name for name in CROSSOVER_CPU_BACKENDS if name in available_backends()]
    if not cpu:
        report["notes"].append("cpu vs gpu skipped: neither numba nor cpp is available")
        return
    document = run_bench(
        CROSSOVER_SUITE,
        [cpu[0], report["backend"]],
        deadline,
        batch=None,
        ops=CROSSOVER_OPS,
        directions=("fwd",),
        crossover=True,
        **CROSSOVER_TIMING,
    )
    report["bench_documents"].append(document)
    report["crossover"] = crossover_rows(document)


# --- the report -------------------------------------------------------------------------


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    from fastcnn.bench.report import format_table

    return format_table(tuple(columns), [tuple(row) for row in rows])


def _significant(value: float) -> str:
    """Three significant digits, no exponent for everyday sizes (as the bench's table)."""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.3g}"


def _gib(nbytes: float | None) -> str:
    return "?" if nbytes is None else f"{nbytes / 2**30:.0f} GiB"


def _device_lines(device: dict) -> list[str]:
    lines = [
        f"device: {device['name']} (sm {device['compute_capability']}, {device['sms']} SMs, "
        f"{_gib(device['memory_bytes'])}, L2 {(device.get('l2_bytes') or 0) / 2**20:.0f} MiB)",
        f"versions: CuPy {device['cupy']}, CUDA runtime {device['cuda_runtime']}, driver "
        f"{device.get('driver') or '?'} (CUDA {device['driver_cuda']})",
    ]
    if device.get("torch"):
        cuda = device.get("torch_cuda") or "no CUDA"
        lines[-1] += f", torch {device['torch']} (CUDA {cuda}, cuDNN {device.get('cudnn') or '—'})"
    else:
        lines[-1] += ", torch not installed"
    return lines


def _suite_lines(suite: dict) -> list[str]:
    verdict = "PASSED" if suite["ok"] else ("INCOMPLETE" if not suite["failed"] else "FAILED")
    lines = [
        f"spec suite on {suite['backend']}: {verdict}, {suite['passed']} passed, "
        f"{suite['failed']} failed in {suite['seconds']:.0f} s"
        + (" (stopped at the timeout)" if suite["incomplete"] else "")
    ]
    rows = [(name, str(p), str(f)) for name, (p, f) in suite["per_spec"].items()]
    if rows:
        lines.append(_table(("spec", "passed", "failed"), rows))
    if suite["not_implemented"]:
        lines.append(
            f"not implemented on {suite['backend']}: {', '.join(suite['not_implemented'])}"
        )
    failures = suite["failures"]
    for failure in failures[:FAILURES_SHOWN]:
        lines.append("FAIL " + Failure(**failure).line())
    if len(failures) > FAILURES_SHOWN:
        lines.append(f"... and {len(failures) - FAILURES_SHOWN} more failures (see --json)")
    return lines


def _ceiling_lines(ceilings: dict) -> list[str]:
    copy, fma = ceilings.get("copy_bytes_per_s"), ceilings.get("fma_flops_per_s")
    text = "ceilings: copy " + ("—" if copy is None else f"{copy / 1e9:.0f} GB/s (read + write)")
    text += "; FP32 FMA loop " + ("—" if fma is None else f"{fma / 1e12:.1f} TFLOP/s")
    return [text, *[f"  ({note})" for note in ceilings.get("notes", [])]]


def _bench_lines(rows: list[dict]) -> list[str]:
    columns = ("case", "dir", "backend", "torch/ours", "ours ms", "torch ms", "rate", "% roof")
    table = []
    for row in rows:
        head = (row["case"], row["direction"], row["variant"])
        if row["ours_s"] is None:
            table.append((*head, "error: " + (row.get("error") or "")[:80], "", "", "", ""))
            continue
        rate = "—" if row["rate"] is None else f"{_significant(row['rate'] / 1e9)} {row['unit']}"
        fraction = row["roofline_fraction"]
        table.append(
            (
                *head,
                "—" if row["ratio"] is None else f"{row['ratio']:.2f}",
                _ms(row["ours_s"]),
                _ms(row["torch_s"]),
                rate,
                "—" if fraction is None else f"{fraction:.0%}",
            )
        )
    ratios = [row["ratio"] for row in rows if row["ratio"]]
    lines = [
        "bench on the GPU (torch/ours > 1: fastcnn is faster; the peer: PyTorch/cuDNN FP32,",
        "TF32 off, cudnn.benchmark on; % roof: of min(FMA peak, intensity x copy bandwidth))",
        _table(columns, table),
    ]
    if ratios:
        geomean = float(np.exp(np.mean(np.log(ratios))))
        lines.append(f"geomean torch/ours over {len(ratios)} rows: {geomean:.2f}")
    return lines


def _crossover_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return ["cpu vs gpu: no case ran on both"]
    columns = ("case", "best CPU", "GPU/CPU speed", "with copies", "crossover batch")
    table = [
        (
            row["case"],
            row["cpu_variant"],
            f"{row['gpu_speedup']:.2f}x",
            f"{row['gpu_speedup_with_copies']:.2f}x",
            str(row["crossover_batch"] or "none"),
        )
        for row in rows
    ]
    return ["cpu vs gpu (the bench's comparison; with copies: host<->device included)",
            _table(columns, table)]  # fmt: skip


def format_report(report: dict) -> str:
    """The report as text: device, suite, ceilings, bench, CPU vs GPU, notes, verdict.

    Examples
    --------
    >>> print(format_report({"device": None, "suite": None, "exit_status": 1}))
    fastcnn gpucheck: exit status 1 (no spec suite result)
    """
    parts: list[str] = []
    if report.get("device"):
        parts += _device_lines(report["device"])
    if report.get("suite"):
        parts += ["", *_suite_lines(report["suite"])]
    if report.get("ceilings"):
        parts += ["", *_ceiling_lines(report["ceilings"])]
    if report.get("bench") is not None:
        parts += ["", *_bench_lines(report["bench"])]
    if report.get("crossover") is not None:
        parts += ["", *_crossover_lines(report["crossover"])]
    extras = [f"skipped (timeout): {name}" for name in report.get("skipped", [])]
    extras += [f"note: {note}" for note in report.get("notes", [])]
    if extras:
        parts += ["", *extras]
    suite = report.get("suite")
    verdict = "suite passed" if suite and suite["ok"] else "no spec suite result"
    if suite and not suite["ok"]:
        verdict = "suite failed" if suite["failed"] else "suite incomplete"
    seconds = f" after {report['seconds']:.0f} s" if "seconds" in report else ""
    if parts:
        parts.append("")
    parts.append(f"fastcnn gpucheck: exit status {report['exit_status']}{seconds} ({verdict})")
    return "\n".join(parts)


# --- command line -----------------------------------------------------------------------


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fastcnn.gpucheck", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"the first {QUICK_CASES} cases of each spec and the bench's quick suite",
    )
    parser.add_argument("--json", metavar="PATH", help="write the whole report as JSON to PATH")
    parser.add_argument(
        "--skip-bench", action="store_true", help="device and spec suite only (no timing)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"start no new part, check or measurement after this (default {DEFAULT_TIMEOUT_S:g})",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """``python -m fastcnn.gpucheck``: run the check, print the report, return the exit status."""
    arguments = parse_arguments(argv)
    missing = missing_gpu()
    if missing is not None:
        print(f"fastcnn gpucheck: {missing}", file=sys.stderr)
        return EXIT_NO_GPU
    report = run_check(quick=arguments.quick, skip_bench=arguments.skip_bench,
                       timeout=arguments.timeout)  # fmt: skip
    print(format_report(report), flush=True)
    if arguments.json:
        with open(arguments.json, "w") as file:
            json.dump(report, file, indent=1, default=str)
        print(f"report written to {arguments.json}")
    return report["exit_status"]


if __name__ == "__main__":
    sys.exit(main())
