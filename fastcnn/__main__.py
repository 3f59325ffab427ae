"""Command line: ``python -m fastcnn info|compile|bench`` (and ``fastcnn ...``)."""

from __future__ import annotations

import argparse
import sys


def _version() -> str:
    from fastcnn import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastcnn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    parser.add_argument("--version", action="version", version=f"fastcnn {_version()}")
    commands.add_parser("info", help="versions, backends, threads and CPU features")
    compile_parser = commands.add_parser(
        "compile",
        help="compile every kernel ahead into the on-disk cache (once per CPU and version)",
    )
    compile_parser.add_argument(
        "--dtypes", default="float32,float64", help="comma-separated (default: both)"
    )
    compile_parser.add_argument(
        "--processes", type=int, default=None, help="worker processes (default: one per core)"
    )
    from fastcnn.bench.cli import DESCRIPTION, add_arguments

    add_arguments(commands.add_parser("bench", help=DESCRIPTION, description=DESCRIPTION))
    args = parser.parse_args(argv)
    if args.command == "info":
        from fastcnn import show_config

        show_config()
    elif args.command == "compile":
        import time

        from fastcnn._compile import compile_kernels

        started = time.perf_counter()
        try:
            timings = compile_kernels(args.dtypes.split(","), processes=args.processes)
        except ValueError as error:
            parser.error(str(error))
        slowest = sorted(timings.items(), key=lambda item: -item[1])[:3]
        detail = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in slowest)
        print(
            f"compiled {len(timings)} units in {time.perf_counter() - started:.1f} s "
            f"(slowest: {detail})"
        )
    elif args.command == "bench":
        from fastcnn.bench.cli import run

        return run(args, argv[1:] if argv is not None else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
