"""Run a benchmark: plan the tasks, measure the ceilings, time every task in its
library's own worker process, and assemble the JSON document (``schema.md``).
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from fastcnn.bench.cases import (
    PEER,
    SUITES,
    Task,
    describe,
    device_of,
    direction_ops,
    model_task,
    peer_backend,
    resolve_case,
    suite_cases,
    suite_models,
)
from fastcnn.bench.ceilings import gpu_available, roofline
from fastcnn.bench.models import TRAIN, kernels
from fastcnn.bench.schema import SCHEMA_VERSION
from fastcnn.bench.timing import (
    DEFAULT_MAX_RUNS,
    DEFAULT_MIN_RUNS,
    DEFAULT_MIN_TIME,
    available_cores,
    last_level_cache_bytes,
)
from fastcnn.bench.worker import WorkerError, WorkerProcess

#: The allocator settings both sides' workers get (a value already in the environment
#: wins): large blocks come from the heap and freed memory stays there, so no call
#: page-faults a fresh output in. The peer measured 111 vs 360 GFLOP/s on a conv
#: default vs this way.
ALLOCATOR_ENVIRONMENT = {
    "MALLOC_MMAP_THRESHOLD_": str(2**30),
    "MALLOC_TRIM_THRESHOLD_": str(2**32),
}


@dataclass
class BenchSettings:
    """Everything that decides what a run measures (the command-line options)."""

    suite: str = "quick"
    ops: list[str] | None = None
    backends: list[str] | None = None  # None: every available non-reference backend
    algos: list[str] | None = None  # None: "auto" only
    dtype: str = "float32"
    batch: int | None = None
    threads: int = field(default_factory=available_cores)
    directions: tuple[str, ...] = ("fwd", "bwd")
    min_time: float = DEFAULT_MIN_TIME
    min_runs: int = DEFAULT_MIN_RUNS
    max_runs: int = DEFAULT_MAX_RUNS
    vs: str = "torch"
    gpu_crossover: bool = True

    def to_json(self) -> dict:
        return {
            "suite": self.suite,
            "ops": self.ops,
            "backends": self.backends or default_backends(),
            "algos": self.algos,
            "dtype": self.dtype,
            "batch": self.batch,
            "threads": self.threads,
            "directions": list(self.directions),
            "min_time": self.min_time,
            "min_runs": self.min_runs,
            "max_runs": self.max_runs,
            "vs": self.vs,
        }


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def default_backends() -> list[str]:
    """Every available backend except the float64 reference (a correctness oracle)."""
    from fastcnn.backends import available_backends

    return [name for name in available_backends() if name != "reference"]


def plan(settings: BenchSettings) -> tuple[list[Task], list[str]]:
    """The tasks of a run, in order (each case's fastcnn variants, then the peer; the op
    cases, then the model steps), and notes."""
    from fastcnn.backends import (
        BACKENDS,
        BackendUnavailableError,
        algorithms,
        check_backend_name,
        has_op,
    )

    if settings.suite not in SUITES:
        raise ValueError(f"unknown suite {settings.suite!r}; known: {list(SUITES)}")
    backends = settings.backends or default_backends()
    unknown = [name for name in backends if name not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backends {unknown}; known: {list(BACKENDS)}")
    for name in backends:
        try:
            check_backend_name(name)
        except BackendUnavailableError as error:
            raise ValueError(str(error)) from None
    if settings.algos:
        offered = {a for name in backends for op in ("conv2d",) for a in algorithms(op, name)}
        unknown = sorted(set(settings.algos) - offered - {"auto"})
        if unknown:
            raise ValueError(
                f"unknown algos {unknown}; the backends {list(backends)} offer "
                f"{sorted(offered) or 'none'} (and auto)"
            )
    tasks: list[Task] = []
    notes: list[str] = []
    unimplemented: dict[str, set[str]] = {}
    for spec, source, case in suite_cases(settings.suite, settings.ops):
        for direction in settings.directions:
            op = direction_ops(spec, direction)
            if op is None:
                continue
            common = {
                "op": spec.name,
                "case": case.name,
                "source": source,
                "direction": direction,
                "dtype": settings.dtype,
                "batch": settings.batch,
            }
            ours = []
            for backend in backends:
                if not has_op(op, backend):
                    unimplemented.setdefault(op, set()).add(backend)
                    continue
                offered = algorithms(op, backend)
                if not offered:
                    algos: list[str | None] = [None]
                elif settings.algos:
                    algos = [a for a in settings.algos if a == "auto" or a in offered]
                    ignored = sorted(set(settings.algos) - set(algos))
                    note = f"{backend} {op} offers algos {list(offered)}; ignored {ignored}"
                    if ignored and note not in notes:
                        notes.append(note)
                else:
                    algos = ["auto"]
                for algo in algos:
                    task = Task(**common, library="fastcnn", backend=backend, algo=algo)
                    if _takes(task, case):
                        ours.append(task)
                    else:
                        notes.append(f"{task.variant} cannot take {op} {case.name} {direction}")
            tasks += ours
            peer_has_it = spec.torch_forward is not None
            if settings.vs == PEER and peer_has_it:
                tasks += [
                    Task(**common, library=PEER, backend=peer_backend(device))
                    for device in _devices(ours)
                ]
    tasks += _model_tasks(settings, backends, notes, unimplemented)
    for backend in backends:
        lacking = sorted(op for op, missing in unimplemented.items() if backend in missing)
        if lacking:
            notes.append(f"{backend} does not implement {', '.join(lacking)}")
    return tasks, notes


def _model_tasks(
    settings: BenchSettings, backends: list[str], notes: list[str], unimplemented: dict
) -> list[Task]:
    """The suite's model steps: on every backend that has all the step's kernels (what a
    backend lacks goes into ``unimplemented``), then the peer."""
    from fastcnn.backends import has_op

    tasks = []
    for model, source in suite_models(settings.suite, settings.ops):
        ours = []
        for backend in backends:
            missing = [op for op in kernels(model) if not has_op(op, backend)]
            for op in missing:
                unimplemented.setdefault(op, set()).add(backend)
            if not missing:
                ours.append(model_task(model, source, settings.dtype, settings.batch, backend))
        if ours and settings.algos:
            notes.append(f"{model.name}: its layers run algo auto (--algos is for conv2d cases)")
        tasks += ours
        if settings.vs == PEER:
            tasks += [
                model_task(model, source, settings.dtype, settings.batch, peer_backend(device))
                for device in _devices(ours)
            ]
    return tasks


def _devices(tasks: list[Task]) -> list[str]:
    """The devices ``tasks`` run on, in order: each gets the peer on that device."""
    return list(dict.fromkeys(device_of(task.backend) for task in tasks))


def busy_note(cores: int) -> str | None:
    """A warning when other processes already keep the cores busy (Unix load average).

    On a busy machine a multi-threaded kernel waits for its slowest thread to be
    scheduled, so times jump by whole scheduler slices (4-16 ms) and spread widely.
    """
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    if load < 0.5:
        return None
    return (
        f"load average {load:.1f} on {cores} cores before the run: other processes are "
        "busy; multi-threaded times will be inflated and noisy"
    )


def worker_environment() -> dict[str, str]:
    """The environment every worker gets: the same allocator settings on both sides."""
    environment = dict(os.environ)
    for name, value in ALLOCATOR_ENVIRONMENT.items():
        environment.setdefault(name, value)
    return environment


def machine_info() -> dict:
    """CPU name and features, cores, versions and backends (from ``fastcnn._config``)."""
    from fastcnn import __version__
    from fastcnn._config import _version, cpu_features, cpu_name
    from fastcnn.backends import backend_status

    gpu = None
    if gpu_available():
        import cupy

        properties = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        gpu = properties["name"]
        gpu = gpu.decode() if isinstance(gpu, bytes) else str(gpu)
    packages = ("numpy", "numba", "llvmlite", "scipy", "torch", "cupy")
    return {
        "cpu": cpu_name(),
        "features": cpu_features(),
        "cores": os.cpu_count() or 1,
        "usable_cores": available_cores(),
        "last_level_cache_bytes": last_level_cache_bytes(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {"fastcnn": __version__, **{p: _version(p) for p in packages}},
        "backends": {
            name: {"available": available, "reason": reason}
            for name, (available, reason) in backend_status().items()
        },
        "gpu": gpu,
    }


def timed_label(settings: BenchSettings) -> str:
    """What a run times, for its header: the op directions ("fwd+bwd") and "train" when it
    has model steps."""
    parts = list(settings.directions) if suite_cases(settings.suite, settings.ops) else []
    if suite_models(settings.suite, settings.ops):
        parts.append(TRAIN)
    return "+".join(parts or settings.directions)


def method_summary(settings: BenchSettings, environment: dict[str, str]) -> str:
    """One line saying how the numbers are taken (the header of the table)."""
    allocator = " ".join(f"{name}={environment[name]}" for name in ALLOCATOR_ENVIRONMENT)
    peer = "vs torch in its own process" if settings.vs == PEER else "no peer (--vs none)"
    steps = ""
    if suite_models(settings.suite, settings.ops):
        steps = (
            "; a model's training step (forward, loss, backward, SGD update) is one timed "
            "call, fastcnn's layers reusing their buffers"
        )
    return (
        f"suite {settings.suite}, {settings.dtype}, {timed_label(settings)}, "
        f"{settings.threads} threads (fastcnn.set_num_threads / torch.set_num_threads); "
        f"each backend in its own worker process, {peer}; {allocator} in every worker; "
        f"first call timed apart, 1 warm-up, median of >= {settings.min_runs} runs and "
        f">= {settings.min_time:g} s (at most {settings.max_runs}); "
        f"inputs rotated over >= 2 sets (>= 2x the {last_level_cache_bytes() // 2**20} MiB cache); "
        "outputs preallocated (out=) where the API allows, one per call site for every "
        "input set (the peer's fresh outputs come back warm from its allocator)" + steps
    )


class Progress:
    """What the runner reports as it goes (the CLI shows a bar or plain lines)."""

    def start(self, total: int, description: str) -> None: ...

    def advance(self, task: Task | None, result: dict) -> None: ...

    def close(self) -> None: ...


def _geometry_directions(task: Task) -> tuple[str, ...]:
    return ("forward",) if task.direction == "fwd" else ("input_gradient", "weight_gradient")


def _algorithms_run(task: Task) -> str | None:
    """The algorithm(s) a conv2d task runs: ``"auto"`` resolved by the heuristic, one name
    per gradient for the backward ("winograd+direct"); None for other ops and models."""
    from fastcnn.backends import algorithm_table
    from fastcnn.testing.specs import conv_geometry

    if task.kind != "op" or task.library == PEER or task.op != "conv2d" or task.algo is None:
        return None
    op = "conv2d" if task.direction == "fwd" else "conv2d_backward"
    table = algorithm_table(op, task.backend)
    if table is None:
        return None
    _, case = resolve_case(task.op, task.source, task.case, task.batch)
    g = conv_geometry(case)
    names = [
        table.heuristic(g, direction)[0] if task.algo == "auto" else task.algo
        for direction in _geometry_directions(task)
    ]
    return "+".join(dict.fromkeys(names))


def _takes(task: Task, case) -> bool:
    """Whether the task's named algorithm takes its case in every direction it runs."""
    from fastcnn.backends import algorithm_table
    from fastcnn.testing.specs import conv_geometry

    op = "conv2d" if task.direction == "fwd" else "conv2d_backward"
    table = algorithm_table(op, task.backend)
    if table is None or task.algo in (None, "auto"):
        return True
    g = conv_geometry(case)
    return all(table.takes(task.algo, g, d) for d in _geometry_directions(task))


def _result_record(task: Task, reply: dict, ceilings: dict) -> dict:
    workload = describe(task)
    flops, nbytes = workload.flops, workload.bytes
    record = {
        "key": task.key,
        "case_key": task.case_key,
        **task.to_json(),
        "batch": workload.batch,
        "variant": task.variant,
        "device": device_of(task.backend),
        "tags": list(workload.tags),
        "shapes": {name: list(shape) for name, shape in workload.shapes.items()},
        "params": {k: list(v) if isinstance(v, tuple) else v for k, v in workload.params.items()},
        "flops": flops,
        "bytes": nbytes,
        "intensity": flops / nbytes if nbytes else 0.0,
    }
    ran = _algorithms_run(task)
    if ran:
        record["ran"] = ran
    record.update({k: v for k, v in reply.items() if k not in ("status", "error")})
    record["status"] = reply.get("status", "error")
    if record["status"] != "ok":
        record["error"] = reply.get("error", "unknown error")
        return record
    machine = ceilings.get(record["device"])
    if machine:
        ceiling, bound = roofline(
            flops,
            nbytes,
            machine["roofline"]["peak_flops"],
            machine["roofline"]["bandwidth_bytes_per_s"],
        )
        median = record["median_s"]
        record.update(
            bound=bound,
            ceiling_flops_per_s=ceiling,
            flops_per_s=flops / median,
            bytes_per_s=nbytes / median,
            roofline_fraction=flops / median / ceiling if ceiling else 0.0,
        )
    return record


def add_peer_ratios(results: list[dict]) -> None:
    """Set each fastcnn result's ``speedup_vs_peer``: peer median / ours (> 1: faster),
    the peer on the same device (a GPU result against PyTorch on the GPU)."""
    peer = {
        (r["case_key"], r["device"]): r["median_s"]
        for r in results
        if r["library"] == PEER and r["status"] == "ok"
    }
    for result in results:
        if result["library"] == PEER:
            continue
        theirs = peer.get((result["case_key"], result["device"]))
        ok = result["status"] == "ok" and theirs is not None
        result["speedup_vs_peer"] = theirs / result["median_s"] if ok else None


class Runner:
    """Owns the worker processes of one run (one per backend, started on first use)."""

    def __init__(self, settings: BenchSettings, environment: dict[str, str]) -> None:
        self.settings = settings
        self.environment = environment
        self.workers: dict[str, WorkerProcess] = {}
        self.worker_info: dict[str, dict] = {}

    def worker(self, task: Task) -> WorkerProcess:
        name = task.backend
        if name not in self.workers:
            worker = WorkerProcess(name, self.environment)
            self.workers[name] = worker
            reply = worker.request(
                {
                    "kind": "setup",
                    "library": task.library,
                    "backend": task.backend,
                    "threads": self.settings.threads,
                }
            )
            if reply.get("status") != "ok":
                raise WorkerError(reply.get("error", "setup failed"))
            self.worker_info[name] = {k: v for k, v in reply.items() if k != "status"}
        return self.workers[name]

    def measure(self, task: Task) -> dict:
        request = {
            "kind": "measure",
            "task": task.to_json(),
            "timing": {
                "min_time": self.settings.min_time,
                "min_runs": self.settings.min_runs,
                "max_runs": self.settings.max_runs,
            },
        }
        try:
            return self.worker(task).request(request)
        except WorkerError as error:  # a crashed worker: record it, start afresh next time
            self.workers.pop(task.backend).close(kill=True)
            return {"status": "error", "error": str(error)}

    def ceilings(self, gpu: bool) -> dict:
        worker = WorkerProcess("ceilings", self.environment)
        try:
            reply = worker.request(
                {
                    "kind": "ceilings",
                    "dtype": self.settings.dtype,
                    "threads": self.settings.threads,
                    "gpu": gpu,
                }
            )
        finally:
            worker.close(kill=True)
        if reply.get("status") != "ok":
            raise WorkerError(f"measuring the ceilings failed: {reply.get('error')}")
        return {"cpu": reply["cpu"], "gpu": reply.get("gpu")}

    def close(self, kill: bool = False) -> None:
        for worker in self.workers.values():
            worker.close(kill=kill)
        self.workers.clear()


def run(
    settings: BenchSettings,
    progress: Progress | None = None,
    command: str = "",
    on_header: Callable[[str], None] | None = None,
) -> dict:
    """Measure everything ``settings`` asks for; returns the JSON document.

    Ctrl-C stops the run and returns what was measured so far, with
    ``"interrupted": true``.
    """
    progress = progress or Progress()
    environment = worker_environment()
    tasks, notes = plan(settings)
    busy = busy_note(available_cores())
    if busy:
        notes.insert(0, busy)
    gpu = gpu_available()
    document: dict = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "settings": settings.to_json(),
        "machine": machine_info(),
        "method": {
            "summary": method_summary(settings, environment),
            "environment": {name: environment[name] for name in ALLOCATOR_ENVIRONMENT},
            "workers": {},
        },
        "ceilings": {"cpu": None, "gpu": None},
        "results": [],
        "gpu_vs_cpu": None,
        "notes": notes,
        "interrupted": False,
    }
    if on_header:
        on_header(document["method"]["summary"])
        if busy:
            on_header(f"warning: {busy}")
    runner = Runner(settings, environment)
    try:
        progress.start(len(tasks) + 1, "ceilings")
        document["ceilings"] = runner.ceilings(gpu)
        progress.advance(None, {"status": "ok"})
        for task in tasks:
            reply = runner.measure(task)
            record = _result_record(task, reply, document["ceilings"])
            document["results"].append(record)
            progress.advance(task, record)
        if gpu:
            document["gpu_vs_cpu"] = gpu_comparison(runner, document, settings)
    except KeyboardInterrupt:
        document["interrupted"] = True
        runner.close(kill=True)
    finally:
        progress.close()
        document["method"]["workers"] = runner.worker_info
        runner.close()
    add_peer_ratios(document["results"])
    return document


def gpu_comparison(runner: Runner, document: dict, settings: BenchSettings) -> list[dict]:
    """GPU vs the best CPU backend per case, without and with copies, and the crossover batch.

    The crossover is the smallest batch (powers of two up to the case's) at which the
    GPU with host<->device copies beats the best CPU variant.
    """
    results = [r for r in document["results"] if r["status"] == "ok" and r["library"] != PEER]
    comparisons = []
    for case_key in dict.fromkeys(r["case_key"] for r in results):
        cpu = [r for r in results if r["case_key"] == case_key and r["device"] == "cpu"]
        gpu = [r for r in results if r["case_key"] == case_key and r["device"] == "gpu"]
        if not cpu or not gpu:
            continue
        best_cpu = min(cpu, key=lambda r: r["median_s"])
        best_gpu = min(gpu, key=lambda r: r["median_s"])
        with_copies = best_gpu.get("with_copies", {}).get("median_s", best_gpu["median_s"])
        comparisons.append(
            {
                "case_key": case_key,
                "cpu_variant": best_cpu["variant"],
                "gpu_variant": best_gpu["variant"],
                "gpu_speedup": best_cpu["median_s"] / best_gpu["median_s"],
                "gpu_speedup_with_copies": best_cpu["median_s"] / with_copies,
                "crossover_batch": _crossover(runner, best_cpu, best_gpu)
                if settings.gpu_crossover
                else None,
            }
        )
    return comparisons


def _crossover(runner: Runner, cpu: dict, gpu: dict) -> int | None:
    batch = 1
    while batch <= cpu["batch"]:
        times = []
        for record in (cpu, gpu):
            task = Task.from_json({**record, "batch": batch})
            reply = runner.measure(task)
            if reply.get("status") != "ok":
                return None
            times.append(reply.get("with_copies", reply)["median_s"])
        if times[1] < times[0]:
            return batch
        batch *= 2
    return None
