"""The failures a user can cause or meet, each with its own exit code.

An expected failure (a bad recipe key, a missing file, a damaged checkpoint, a diverged run)
ends a command with one line naming the file, key or value, and the code below; anything
else is a bug and keeps its traceback. ``verydeep -v`` shows the traceback of both.
"""

from __future__ import annotations

import signal

EXIT_OK = 0
EXIT_BUG = 1  # an unexpected exception: a traceback, and a bug to report
EXIT_USAGE = 2  # bad command line, recipe, key or value (argparse's own code for bad usage)
EXIT_DATA = 3  # a dataset or image folder that cannot be used as given
EXIT_CHECKPOINT = 4  # a checkpoint or weights file missing, damaged, or not matching the run
EXIT_DIVERGED = 5  # training stopped: non-finite loss, or too many skipped steps
EXIT_RUN_FOLDER = 6  # the run folder is in use, holds a run (no --resume/--overwrite), or has nothing to resume
EXIT_IO = 7  # the system refused: disk full, permission denied, read-only folder


def exit_code_for_signal(signum: int) -> int:
    """128 + the signal number, the shell's convention (SIGINT 130, SIGTERM 143)."""
    return 128 + int(signum)


EXIT_CODES = {
    EXIT_OK: "finished",
    EXIT_BUG: "unexpected error (a bug: the traceback is printed)",
    EXIT_USAGE: "bad command line, recipe, config key or value",
    EXIT_DATA: "dataset or image folder unusable as given",
    EXIT_CHECKPOINT: "checkpoint or weights file missing, damaged, or not matching",
    EXIT_DIVERGED: "training diverged (non-finite loss, or too many skipped steps)",
    EXIT_RUN_FOLDER: "run folder in use, holding a run (without --resume or --overwrite), or nothing to resume",
    EXIT_IO: "disk full, permission denied or read-only folder",
    exit_code_for_signal(signal.SIGINT): "interrupted by SIGINT (Ctrl-C); a checkpoint was written",
    exit_code_for_signal(signal.SIGTERM): "interrupted by SIGTERM (preemption); a checkpoint was written",
}


class VerydeepError(Exception):
    """Base of the expected failures; ``exit_code`` is what the command exits with."""

    exit_code = EXIT_USAGE


class UsageError(VerydeepError, ValueError):
    """A bad command-line value or combination of options."""

    exit_code = EXIT_USAGE


class CheckpointError(VerydeepError, ValueError):
    """A checkpoint or weights file that is missing, damaged, or does not fit the run."""

    exit_code = EXIT_CHECKPOINT


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint where one was named (a run folder without ``best.pt``/``last.pt``, a typo)."""


class OutputError(VerydeepError, OSError):
    """The system refused a write: disk full, permission denied, read-only folder.
    ``OutputError(errno, message)``: the message names the file."""

    exit_code = EXIT_IO

    def __str__(self) -> str:
        return self.strerror or super().__str__()  # the message alone, without "[Errno N]"


class RunFolderError(VerydeepError, RuntimeError):
    """A run folder another process is training in, one holding a run a new training would
    replace, or one with nothing to resume."""

    exit_code = EXIT_RUN_FOLDER


class Interrupted(VerydeepError, RuntimeError):
    """A run stopped by a signal after writing its checkpoint; exits 128 + the signal number.

    Not a failure of the run, so the CLI prints it without "error:"; raised (not returned) so
    that no caller, such as the demo's evaluation, goes on as if training had finished."""

    def __init__(self, signal_name: str, message: str, step: int | None = None):
        super().__init__(message)
        self.signal_name = signal_name
        self.step = step  # the training step it stopped at, when a training stopped
        self.exit_code = exit_code_for_signal(signal.Signals[signal_name])
