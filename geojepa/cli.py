"""The ``geojepa`` command line: thin parsers that call library functions."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from geojepa import __version__
from geojepa.errors import GeoJepaError


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="geojepa", description=__doc__)
    parser.add_argument("--version", action="version", version=f"geojepa {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except GeoJepaError as err:
        print(f"geojepa {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"geojepa {args.command}: interrupted", file=sys.stderr)
        return 130
