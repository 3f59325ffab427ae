"""``fastcnn bench``: how fast is each kernel here, against PyTorch and the machine's ceilings.

>>> from fastcnn.bench.cli import main
>>> main(["--suite", "smoke", "--backends", "reference", "--vs", "none"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys

from fastcnn.bench.cases import DIRECTIONS, PEER, SUITES, Task

DESCRIPTION = __doc__.splitlines()[0].removeprefix("``fastcnn bench``: ")


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fastcnn bench``."""
    from fastcnn.bench.timing import DEFAULT_MAX_RUNS, DEFAULT_MIN_TIME

    parser.add_argument(
        "--suite",
        default="quick",
        help=f"cases to run: one of {', '.join(SUITES)} (default: quick); train: a whole "
        "LeNet-5 training step (forward, loss, backward, SGD with momentum)",
    )
    parser.add_argument(
        "--ops", type=_names, help="comma-separated ops or models, e.g. conv2d,relu or lenet5"
    )
    parser.add_argument(
        "--backends",
        type=_names,
        help="comma-separated backends (default: every available one but the reference)",
    )
    parser.add_argument(
        "--algos", type=_names, help="conv2d algorithms to time each, e.g. auto,direct,im2col"
    )
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument(
        "--batch", type=_positive_int, help="replace every case's and model step's batch size N"
    )
    parser.add_argument(
        "--threads", type=_positive_int, help="threads for every library (default: all cores)"
    )
    parser.add_argument(
        "--direction",
        choices=(*DIRECTIONS, "both"),
        default="both",
        help="forward, backward (timed alone) or both (default); a model step is always "
        "the whole step",
    )
    parser.add_argument(
        "--repeats",
        type=_positive_int,
        default=DEFAULT_MAX_RUNS,
        help=f"most timed runs per measurement (default {DEFAULT_MAX_RUNS})",
    )
    parser.add_argument(
        "--min-time",
        type=float,
        default=DEFAULT_MIN_TIME,
        help=f"seconds of timed runs per measurement (default {DEFAULT_MIN_TIME})",
    )
    parser.add_argument("--json", metavar="FILE", help="write the results (schema.md) to FILE")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument(
        "--verbose", action="store_true", help="print the method in full (allocator, workers)"
    )
    parser.add_argument("--plot", metavar="FILE.png", help="roofline chart and per-case bars")
    parser.add_argument("--compare", metavar="OLD.json", help="speed-ups and regressions vs OLD")
    parser.add_argument(
        "--vs",
        choices=(PEER, "none"),
        help="peer to time beside fastcnn (default: torch when installed)",
    )


class _Bar:
    """A tqdm progress bar on a terminal, one plain line per task otherwise."""

    def __init__(self) -> None:
        self._bar = None
        self._done = 0
        self._total = 0

    def start(self, total: int, description: str) -> None:
        self._total = total
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm

                # A terminal that reports no width (some pseudo-terminals) gets 100 columns.
                columns = shutil.get_terminal_size().columns or 100
                self._bar = tqdm(
                    total=total, desc=description, unit="case", leave=False, ncols=columns
                )
            except ImportError:
                pass

    def advance(self, task: Task | None, result: dict) -> None:
        self._done += 1
        name = "ceilings" if task is None else f"{task.op} {task.case} {task.direction}"
        detail = "" if task is None else f" {task.variant}"
        if result.get("status") == "ok" and "median_s" in result:
            outcome = f"{result['median_s'] * 1e3:.3g} ms"
        elif result.get("status") == "ok":
            outcome = "done"
        else:
            outcome = "error"
        if self._bar is not None:
            self._bar.set_description(f"{name}{detail}")
            self._bar.update(1)
        else:
            print(f"[{self._done}/{self._total}] {name}{detail}: {outcome}", file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def settings_from_arguments(arguments: argparse.Namespace):
    """:class:`~fastcnn.bench.runner.BenchSettings` from parsed options (checks peer presence)."""
    from fastcnn.bench.runner import BenchSettings, torch_installed
    from fastcnn.bench.timing import available_cores

    vs = arguments.vs
    if vs is None:
        vs = PEER if torch_installed() else "none"
    elif vs == PEER and not torch_installed():
        raise SystemExit("fastcnn bench: --vs torch needs PyTorch: pip install torch")
    directions = DIRECTIONS if arguments.direction == "both" else (arguments.direction,)
    return BenchSettings(
        suite=arguments.suite,
        ops=arguments.ops,
        backends=arguments.backends,
        algos=arguments.algos,
        dtype=arguments.dtype,
        batch=arguments.batch,
        threads=arguments.threads or available_cores(),
        directions=directions,
        min_time=arguments.min_time,
        min_runs=min(3, arguments.repeats),
        max_runs=arguments.repeats,
        vs=vs,
    )


def _header(line: str, settings, verbose: bool) -> None:
    """The run's first lines: what runs, in one short line; the method in full with
    ``--verbose`` (it is always in the JSON and the README); warnings always."""
    if line.startswith("warning:") or verbose:
        print(f"fastcnn bench: {line}", flush=True)
        return
    from fastcnn._config import cpu_name
    from fastcnn.bench.runner import timed_label

    directions = timed_label(settings)
    peer = "" if settings.vs == "none" else f", vs {settings.vs}"
    print(
        f"fastcnn bench: suite {settings.suite}, {settings.dtype}, {directions}, "
        f"{settings.threads} threads, {cpu_name()}{peer} (--verbose: the method)",
        flush=True,
    )


def _read_results(path: str) -> dict:
    """A ``--json`` file of an earlier run, checked; ValueError in one line otherwise."""
    from fastcnn.bench.schema import validate

    try:
        with open(path) as file:
            document = json.load(file)
    except OSError as error:
        raise ValueError(f"--compare {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"--compare {path}: not JSON ({error.msg}, line {error.lineno})") from None
    try:
        validate(document)
    except ValueError as error:
        first = str(error).splitlines()[0]
        raise ValueError(f"--compare {path}: not a fastcnn bench --json file ({first})") from None
    return document


def run(arguments: argparse.Namespace, argv: list[str] | None = None) -> int:
    """Run the benchmark the options describe and print/write its results."""
    from fastcnn.bench.report import compare_text, report_text
    from fastcnn.bench.runner import run as run_benchmark
    from fastcnn.bench.schema import validate

    if arguments.plot:  # fail before measuring, not after
        from fastcnn.bench.plot import PlotUnavailableError, _pyplot

        try:
            _pyplot()
        except PlotUnavailableError as error:
            print(f"fastcnn bench: {error}", file=sys.stderr)
            return 2
    old = None
    if arguments.compare:
        try:
            old = _read_results(arguments.compare)
        except ValueError as error:
            print(f"fastcnn bench: {error}", file=sys.stderr)
            return 2
    settings = settings_from_arguments(arguments)
    command = "fastcnn bench " + shlex.join(argv if argv is not None else sys.argv[2:])
    if settings.vs == "none" and arguments.vs is None:
        print("peer: PyTorch is not installed; timing fastcnn alone", flush=True)
    try:
        document = run_benchmark(
            settings,
            _Bar(),
            command=command,
            on_header=lambda line: _header(line, settings, arguments.verbose),
        )
    except ValueError as error:
        print(f"fastcnn bench: {error}", file=sys.stderr)
        return 2
    validate(document)
    print(report_text(document, markdown=arguments.markdown))
    if old is not None:
        print()
        print(compare_text(old, document, markdown=arguments.markdown))
    if arguments.json:
        with open(arguments.json, "w") as file:
            json.dump(document, file, indent=1)
        print(f"results written to {arguments.json}")
    if arguments.plot:
        from fastcnn.bench.plot import write_plot

        write_plot(document, arguments.plot)
        print(f"plot written to {arguments.plot}")
    return 130 if document["interrupted"] else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m fastcnn.bench.cli [options]`` (the same as ``fastcnn bench``)."""
    parser = argparse.ArgumentParser(prog="fastcnn bench", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv), argv)


if __name__ == "__main__":
    sys.exit(main())
