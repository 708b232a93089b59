"""Entry point: ``verydeep <command> ...``. Each command group lives in its own module."""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import signal
import sys

from verydeep.cli.vocabulary import foreign_flag_hint, show_defaults
from verydeep.errors import EXIT_IO, EXIT_USAGE, Interrupted, VerydeepError, exit_code_for_signal

# Command modules, each with ``add_parser(subparsers)``; handlers return an exit code.
COMMANDS = (
    "verydeep.cli.models",
    "verydeep.cli.train",
    "verydeep.cli.recipes",
    "verydeep.cli.data",
    "verydeep.cli.evaluate",
    "verydeep.cli.bench",
    "verydeep.cli.fuse",
    "verydeep.cli.reproduce",
)


class Parser(argparse.ArgumentParser):
    """argparse, answering another tool's spelling of a flag (torchvision's, timm's) with ours."""

    def error(self, message: str):
        hint = foreign_flag_hint(message)
        if hint:
            self.exit(EXIT_USAGE, f"verydeep: error: {hint}\n")
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    from verydeep import __version__

    parser = Parser(
        prog="verydeep",
        description="Train and evaluate the VGG networks (Simonyan & Zisserman, ICLR 2015).",
    )
    parser.add_argument("--version", action="version", version=f"verydeep {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub)
    show_defaults(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Our INFO; other libraries' warnings only (the ONNX exporter logs every pass at INFO).
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("verydeep").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C outside the training loop's own handling (start-up, eval)
        if args.verbose:
            raise
        print("verydeep: interrupted", file=sys.stderr)
        return exit_code_for_signal(signal.SIGINT)
    except Exception as e:  # noqa: BLE001 - sorted into expected failures and bugs below
        code = expected_failure_code(e)
        if code is None or args.verbose:
            raise
        _release_frames(e)
        # An interruption is not an error of the run: its checkpoint is written.
        kind = "" if isinstance(e, Interrupted) else "error: "
        print(f"verydeep: {kind}{one_line(e)}", file=sys.stderr)
        return code


def expected_failure_code(e: BaseException) -> int | None:
    """The exit code of an expected failure (see verydeep.errors), None for a bug."""
    if isinstance(e, VerydeepError):
        return e.exit_code
    if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return EXIT_USAGE  # a path given on the command line or in a recipe
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS):
        return EXIT_IO
    if isinstance(e, (ValueError, KeyError)):
        return EXIT_USAGE
    return None


def _release_frames(e: BaseException | None) -> None:
    """Drop the tracebacks of ``e`` and the exceptions it chains: the failed command's frames
    are freed now, so their progress bars close (and print) before the last line, not after."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        e.__traceback__ = None
        e = e.__cause__ or e.__context__


def one_line(e: BaseException) -> str:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    if isinstance(e, OSError) and e.filename:  # the system's own: "PATH: reason", without "[Errno N]"
        msg = f"{e.filename}: {e.strerror or msg}"
    return " ".join(str(msg).split())


if __name__ == "__main__":
    raise SystemExit(main())
