"""Compile time and cold start of the Numba backend: first-call seconds per op.

Each measurement runs in a fresh Python process with its own ``NUMBA_CACHE_DIR`` in a
temporary directory, so nothing compiled by one measurement helps another::

    python benchmarks/cold_start.py --cold              # every op, empty cache, median of 3
    python benchmarks/cold_start.py --cold --ops conv2d,max_pool2d --attribute
    python benchmarks/cold_start.py --warm              # import fastcnn + first conv2d

``--cold``: the first call of each op in a process whose cache is empty (the import is
timed apart). ``--warm``: one process fills the cache, then fresh processes time
``import fastcnn`` plus a first ``conv2d``. ``--attribute`` adds, per run, the seconds
spent in each jitted function (cold: Numba's compile events, exclusive of the callees
compiled inside; warm: loading each function from the cache), largest first.

Inputs are 2 x 3 x 16 x 16 float32 (conv2d with 4 filters 3 x 3, padding 1: the
small-channel algorithm), as in BENCHMARKS.md's "Compile time and cold start".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

#: op name -> (setup code, the first call). ``np``, ``F`` and ``x`` are defined.
CALLS = {
    "conv2d": ("w = rng.standard_normal((4, 3, 3, 3), np.float32)", "F.conv2d(x, w, padding=1)"),
    "conv2d_backward": (
        "w = rng.standard_normal((4, 3, 3, 3), np.float32); "
        "gy = rng.standard_normal((2, 4, 16, 16), np.float32)",
        "F.conv2d_backward(gy, x, w, padding=1)",
    ),
    "max_pool2d": ("", "F.max_pool2d(x, 3, 2, 1, return_indices=True)"),
    "avg_pool2d": ("", "F.avg_pool2d(x, 2)"),
    "relu": ("", "F.relu(x)"),
    "softmax": ("", "F.softmax(x, dim=1)"),
    "cross_entropy": (
        "logits = rng.standard_normal((8, 10), np.float32); t = np.arange(8) % 10",
        "F.cross_entropy(logits, t)",
    ),
    "batch_norm": (
        "m = np.zeros(3, np.float32); v = np.ones(3, np.float32)",
        "F.batch_norm(x, m, v, training=True)",
    ),
    "linear": (
        "a = rng.standard_normal((8, 64), np.float32); "
        "b = rng.standard_normal((32, 64), np.float32)",
        "F.linear(a, b)",
    ),
}

_ATTRIBUTE = r"""
import time as _time
from collections import defaultdict as _defaultdict
_spent = _defaultdict(float)

def _label(function):
    module = getattr(function, "__module__", "") or ""
    return f"{module.rsplit('.', 1)[-1]}.{function.__name__}"

if _mode == "cold":
    from numba.core import event as _event

    class _Recorder(_event.Listener):
        stack = []

        def on_start(self, ev):
            self.stack.append([_time.perf_counter(), 0.0])

        def on_end(self, ev):
            started, inner = self.stack.pop()
            total = _time.perf_counter() - started
            if self.stack:
                self.stack[-1][1] += total
            function = getattr(ev.data.get("dispatcher"), "py_func", None)
            _spent[_label(function) if function else "?"] += total - inner

    _event.register("numba:compile", _Recorder())
else:
    from numba.core import dispatcher as _dispatcher

    _compile = _dispatcher.Dispatcher.compile

    def _timed(self, signature):
        started = _time.perf_counter()
        try:
            return _compile(self, signature)
        finally:
            _spent[_label(self.py_func)] += _time.perf_counter() - started

    _dispatcher.Dispatcher.compile = _timed
"""

_CHILD = r"""
import json, sys, time
_mode, _attribute = sys.argv[1], sys.argv[2] == "1"
if sys.argv[6]:  # another copy of the package: ahead of the installed (editable) one
    sys.meta_path = [f for f in sys.meta_path if "Redirecting" not in type(f).__name__]
    sys.path.insert(0, sys.argv[6])
started, started_cpu = time.perf_counter(), time.process_time()
if _attribute:
    import numba
    exec(sys.argv[5])
import numpy as np
import fastcnn.functional as F
imported = time.perf_counter()
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
exec(sys.argv[3])
before, before_cpu = time.perf_counter(), time.process_time()
exec(sys.argv[4])
after, after_cpu = time.perf_counter(), time.process_time()
result = {"import": imported - started, "call": after - before, "total": after - started}
# Compiling is single-threaded: its CPU seconds move less than wall seconds with the load.
result["call_cpu"], result["total_cpu"] = after_cpu - before_cpu, after_cpu - started_cpu
if _attribute:
    result["functions"] = sorted(_spent.items(), key=lambda item: -item[1])
print(json.dumps(result))
"""


#: ``--source``: the directory holding the ``fastcnn`` package to measure ("" installed).
SOURCE = ""


def _run(mode: str, op: str, cache_dir: str, attribute: bool) -> dict:
    setup, call = CALLS[op]
    environment = {**os.environ, "NUMBA_CACHE_DIR": cache_dir, "FASTCNN_QUIET": "1"}
    arguments = [mode, "1" if attribute else "0", setup, call, _ATTRIBUTE, SOURCE]
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, *arguments],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    if result.returncode:
        raise SystemExit(f"{op} ({mode}) failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def cold(op: str, attribute: bool) -> dict:
    """The first call of ``op`` in a fresh process with an empty cache."""
    with tempfile.TemporaryDirectory(prefix="fastcnn-cold-") as cache_dir:
        return _run("cold", op, cache_dir, attribute)


def warm(repeat: int, attribute: bool, op: str = "conv2d") -> list[dict]:
    """``import fastcnn`` + the first call of ``op``, the cache filled by an earlier process."""
    with tempfile.TemporaryDirectory(prefix="fastcnn-warm-") as cache_dir:
        _run("cold", op, cache_dir, False)
        _run("warm", op, cache_dir, False)  # the OS's file cache, as in a second session
        return [_run("warm", op, cache_dir, attribute) for _ in range(repeat)]


def _report(label: str, runs: list[dict], attribute: bool, key: str) -> None:
    values = [run[key] for run in runs]
    imports = statistics.median(run["import"] for run in runs)
    spread = ", ".join(f"{value:.2f}" for value in values)
    cpu = statistics.median(run[f"{key}_cpu"] for run in runs)
    print(
        f"{label:<16} {statistics.median(values):7.2f} s  (runs {spread}; import {imports:.2f}; "
        f"CPU {cpu:.2f})"
    )
    if attribute:
        middle = sorted(runs, key=lambda run: run[key])[len(runs) // 2]
        last = middle["functions"]
        shown = last[:8]
        rest = sum(seconds for _, seconds in last[8:])
        for name, seconds in shown:
            print(f"{'':<18}{seconds:6.2f}  {name}")
        if rest:
            print(f"{'':<18}{rest:6.2f}  ({len(last) - len(shown)} more)")
        print(f"{'':<18}{len(last):6d}  functions")
    sys.stdout.flush()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--cold", action="store_true", help="empty cache: first call per op")
    which.add_argument("--warm", action="store_true", help="warm cache: import + first conv2d")
    parser.add_argument("--ops", default=",".join(CALLS), help="comma-separated (--cold)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--attribute", action="store_true", help="seconds per jitted function")
    parser.add_argument("--json", metavar="PATH", help="also write every run here")
    parser.add_argument(
        "--source", default="", help="measure the fastcnn package in this directory instead"
    )
    args = parser.parse_args(argv)
    global SOURCE
    SOURCE = os.path.abspath(args.source) if args.source else ""
    results = {}
    if args.cold:
        print(f"first call, cold cache, median of {args.repeat} (seconds):")
        for op in args.ops.split(","):
            if op not in CALLS:
                parser.error(f"unknown op {op!r}; known: {', '.join(CALLS)}")
            runs = [cold(op, args.attribute) for _ in range(args.repeat)]
            results[op] = runs
            _report(op, runs, args.attribute, "call")
    else:
        print(f"import fastcnn + first conv2d, warm cache, median of {args.repeat} (seconds):")
        runs = warm(args.repeat, args.attribute)
        results["warm conv2d"] = runs
        _report("import + conv2d", runs, args.attribute, "total")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1)


if __name__ == "__main__":
    main()
