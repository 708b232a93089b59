"""Progress bars for long work: tqdm on a terminal, plain timestamped-by-interval lines elsewhere.

Outside a terminal (log files, CI, SLURM output) tqdm's carriage-return redraws pile up as one
unreadable line. There :func:`progress_bar` keeps tqdm's bookkeeping but writes each refresh
as its own line, at most every ``LOG_INTERVAL_S`` seconds, plus the final state, once (a
refresh that would repeat the last line's count is not written again).

:func:`progress_items` counts what a person counts (images, not the batches or crops they
come in): each item of the iterable advances the bar by ``count(item)``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator

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


class _LogBar(tqdm):
    """tqdm writing to a log: a refresh showing the same count and postfix as the line before it
    (``close`` redraws the final state the last update wrote) is left out."""

    def display(self, msg=None, pos=None):
        shown = (self.n, self.postfix)
        if msg is None and shown == getattr(self, "_last_shown", None):
            return True
        self._last_shown = shown
        return super().display(msg, pos)


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on a terminal; line-per-refresh output otherwise."""
    stream = kwargs.pop("file", None) or sys.stderr
    if stream.isatty() if hasattr(stream, "isatty") else False:
        return tqdm(iterable, file=stream, **kwargs)
    kwargs.setdefault("mininterval", LOG_INTERVAL_S)
    kwargs.setdefault("ascii", True)
    kwargs["leave"] = True  # the last line stays: a log keeps the finished state
    return _LogBar(iterable, file=_LineWriter(stream), dynamic_ncols=False, ncols=100, **kwargs)


def progress_items(iterable: Iterable, *, total: int | None, count: Callable[[object], int], unit: str = "img",
                   **kwargs) -> Iterator:
    """The items of ``iterable``, a bar over ``total`` units (images) advanced by ``count(item)``
    once each item has been worked on: an evaluation's batches of crops shown as images done."""
    bar = progress_bar(total=total, unit=unit, **kwargs)
    try:
        for item in iterable:
            yield item
            bar.update(count(item))
    finally:
        bar.close()
