"""Errors of the data pipeline: expected failures (exit code 3), printed as one line."""

from __future__ import annotations

from verydeep.errors import EXIT_DATA, VerydeepError


class DataError(VerydeepError, ValueError):
    """A dataset that cannot be used as given (empty folder, bad ground truth, ...).
    The message names the file (and line) at fault."""

    exit_code = EXIT_DATA


class BadImageError(DataError):
    """An image file that cannot be decoded (unreadable, truncated, not an image)."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: cannot decode image: {reason}")

    def __reduce__(self):  # picklable across loader worker processes
        return (BadImageError, (self.path, self.reason))
