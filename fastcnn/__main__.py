"""Command line: ``python -m fastcnn info|bench`` (and ``fastcnn info|bench``)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastcnn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, backends, threads and CPU features")
    from fastcnn.bench.cli import DESCRIPTION, add_arguments

    add_arguments(commands.add_parser("bench", help=DESCRIPTION, description=DESCRIPTION))
    args = parser.parse_args(argv)
    if args.command == "info":
        from fastcnn import show_config

        show_config()
    elif args.command == "bench":
        from fastcnn.bench.cli import run

        return run(args, argv[1:] if argv is not None else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
