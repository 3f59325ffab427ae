"""Command line: ``python -m fastcnn info`` (and ``fastcnn info``)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastcnn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, backends, threads and CPU features")
    args = parser.parse_args(argv)
    if args.command == "info":
        from fastcnn import show_config

        show_config()
    return 0


if __name__ == "__main__":
    sys.exit(main())
