"""A benchmark worker process: ``python -m fastcnn.bench.worker``.

Each library (and each fastcnn backend) is timed in a process of its own, so one
library's thread pool, allocator history and imports cannot slow the other (two
spinning thread pools on two cores cost 5-7x). The parent starts a worker per
backend with the same environment and thread count, sends it one JSON request per
line on stdin and reads one JSON reply per line; only one worker runs at a time.

Requests::

    {"kind": "setup", "library": "fastcnn" | "torch", "backend": ..., "threads": T}
    {"kind": "ceilings", "dtype": "float32", "threads": T, "gpu": false}
    {"kind": "measure", "task": {...Task...}, "timing": {"min_time": ..., ...}}

A task is one op in one direction or a model's whole training step; the worker only
prepares its call (:func:`fastcnn.bench.calls.prepare`) and times it.

Replies are JSON objects; a failed request answers ``{"status": "error", "error": ...}``.
The worker ignores Ctrl-C (the parent decides when it ends) and sends anything a
library prints to stderr, keeping stdout for replies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from fastcnn.bench.cases import PEER_GPU, Task, describe, device_of


def _setup(request: dict) -> dict:
    threads = int(request["threads"])
    reply: dict = {"status": "ok", "pid": os.getpid()}
    if request["library"] == "torch":
        from fastcnn.bench.calls import torch_threads

        reply["threads"] = torch_threads(threads)
        import torch

        reply["version"] = torch.__version__
        if request["backend"] == PEER_GPU:
            if not torch.cuda.is_available():
                raise RuntimeError(f"this torch {torch.__version__} has no CUDA device")
            # float32 as fastcnn computes it: no TF32; cuDNN picks its fastest algorithm.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.benchmark = True
            reply["gpu"] = torch.cuda.get_device_name()
            reply["cudnn"] = torch.backends.cudnn.version()
        return reply
    import fastcnn
    from fastcnn.backends import check_backend_name

    check_backend_name(request["backend"])  # import the backend here, not in the first call
    fastcnn.set_num_threads(threads)
    try:
        import numba

        reply["threads"] = numba.get_num_threads()
    except ImportError:
        reply["threads"] = threads
    reply["version"] = fastcnn.__version__
    return reply


def _ceilings(request: dict) -> dict:
    from fastcnn.bench.ceilings import measure_cpu_ceilings, measure_gpu_ceilings

    reply = {"status": "ok", "cpu": measure_cpu_ceilings(request["dtype"], int(request["threads"]))}
    reply["gpu"] = measure_gpu_ceilings(request["dtype"]) if request.get("gpu") else None
    return reply


def _measure(request: dict) -> dict:
    from fastcnn.bench import calls, timing

    task = Task.from_json(request["task"])
    settings = request.get("timing", {})
    working_set = describe(task).bytes  # what one call must move
    sets = timing.rotation_sets(working_set) if settings.get("rotate", True) else 1
    prepared = calls.prepare(task, sets)
    clock = timing.clock_for(task.backend) if device_of(task.backend) == "gpu" else None
    clock = clock or timing.WallClock()
    options = {
        "min_time": settings.get("min_time", timing.DEFAULT_MIN_TIME),
        "min_runs": settings.get("min_runs", timing.DEFAULT_MIN_RUNS),
        "max_runs": settings.get("max_runs", timing.DEFAULT_MAX_RUNS),
    }
    measured = timing.measure(
        prepared.first_call, prepared.timed_call, prepared.input_sets, clock=clock, **options
    )
    reply = {
        "status": "ok",
        "clock": clock.name,
        "input_sets": prepared.input_sets,
        "outputs": prepared.outputs,
        **measured.summary(),
    }
    if prepared.with_copies_call is not None:  # GPU: the same call with host<->device copies
        with_copies = timing.measure(
            lambda: prepared.with_copies_call(0),
            prepared.with_copies_call,
            prepared.input_sets,
            **options,
        )
        reply["with_copies"] = with_copies.summary()
    return reply


HANDLERS = {"setup": _setup, "ceilings": _ceilings, "measure": _measure}


def serve(requests, replies) -> None:
    """Answer each JSON line of ``requests`` with one JSON line on ``replies``."""
    for line in requests:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            reply = HANDLERS[request["kind"]](request)
        except Exception as error:  # report, keep serving: one bad case must not end the run
            reply = {"status": "error", "error": f"{type(error).__name__}: {error}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not break the protocol
    sys.stdout = sys.stderr
    serve(sys.stdin, replies)


# ---------------------------------------------------------------------------- the parent's side


class WorkerError(RuntimeError):
    """A worker process died or answered something that is not a reply."""


class WorkerProcess:
    """The parent's handle on one worker: start it, ask it things, stop it."""

    def __init__(self, name: str, environment: dict[str, str]) -> None:
        self.name = name
        self._stderr = tempfile.TemporaryFile(mode="w+")
        package_root = str(Path(__file__).resolve().parents[2])
        environment = dict(environment)
        environment["PYTHONPATH"] = os.pathsep.join(
            [package_root, *filter(None, [environment.get("PYTHONPATH")])]
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fastcnn.bench.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=environment,
            text=True,
            start_new_session=True,  # a Ctrl-C in the terminal reaches the parent only
        )

    def request(self, message: dict) -> dict:
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            self.process.wait(timeout=10)
            raise WorkerError(
                f"the {self.name} worker exited with code {self.process.returncode}: "
                f"{self.stderr_tail()}"
            )
        return json.loads(line)

    def stderr_tail(self, lines: int = 5) -> str:
        self._stderr.seek(0)
        return " | ".join(self._stderr.read().strip().splitlines()[-lines:])

    def close(self, kill: bool = False) -> None:
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                try:
                    self.process.stdin.close()
                    self.process.wait(timeout=10)
                except (OSError, subprocess.TimeoutExpired):
                    self.process.kill()
            self.process.wait()
        self._stderr.close()


if __name__ == "__main__":
    main()
