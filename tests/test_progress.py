"""Progress output outside a terminal: one line per refresh, never carriage-return redraws."""

import io

from verydeep.progress import progress_bar


def test_log_output_is_lines_and_keeps_the_final_state():
    log = io.StringIO()  # not a TTY, like a log file or CI
    for _ in progress_bar(range(5), total=5, desc="work", file=log, mininterval=0, leave=False):
        pass
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines and all(line.startswith("work") for line in lines)
    assert "5/5" in lines[-1]


def test_disabled_bar_writes_nothing():
    log = io.StringIO()
    for _ in progress_bar(range(3), file=log, disable=True):
        pass
    assert log.getvalue() == ""
