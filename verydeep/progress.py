"""Progress bars for long work: tqdm on a terminal, plain timestamped-by-interval lines elsewhere.

Outside a terminal (log files, CI, SLURM output) tqdm's carriage-return redraws pile up as one
unreadable line. There :func:`progress_bar` keeps tqdm's bookkeeping but writes each refresh
as its own line, at most every ``LOG_INTERVAL_S`` seconds, plus the final state.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

LOG_INTERVAL_S = 30.0  # seconds between progress lines when stderr is not a terminal


class _LineWriter:
    """A file for tqdm that turns its in-place redraws into separate lines."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip()
        if text:  # tqdm clears its line with blanks: nothing to log
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on a terminal; line-per-refresh output otherwise."""
    stream = kwargs.pop("file", None) or sys.stderr
    if stream.isatty() if hasattr(stream, "isatty") else False:
        return tqdm(iterable, file=stream, **kwargs)
    kwargs.setdefault("mininterval", LOG_INTERVAL_S)
    kwargs.setdefault("ascii", True)
    kwargs["leave"] = True  # the last line stays: a log keeps the finished state
    return tqdm(iterable, file=_LineWriter(stream), dynamic_ncols=False, ncols=100, **kwargs)
