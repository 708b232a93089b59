"""Entry point: ``verydeep <command> ...``. Each command group lives in its own module."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Command modules, each with ``add_parser(subparsers)``; handlers return an exit code.
COMMANDS = (
    "verydeep.cli.models",
    "verydeep.cli.train",
    "verydeep.cli.data",
    "verydeep.cli.evaluate",
    "verydeep.cli.bench",
)


def build_parser() -> argparse.ArgumentParser:
    from verydeep import __version__

    parser = argparse.ArgumentParser(
        prog="verydeep",
        description="Train and evaluate the VGG networks (Simonyan & Zisserman, ICLR 2015).",
    )
    parser.add_argument("--version", action="version", version=f"verydeep {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as e:
        # User errors (bad config key, missing file, bad value): one clear line, no traceback.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"verydeep: error: {msg}", file=sys.stderr)
        if args.verbose:
            raise
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
