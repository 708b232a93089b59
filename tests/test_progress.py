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


def test_log_output_does_not_repeat_the_final_count():
    log = io.StringIO()
    bar = progress_bar(total=4, desc="epoch 1/2", file=log, mininterval=0)
    for i in range(4):
        bar.set_postfix(loss=f"{1 / (i + 1):.3f}", refresh=False)
        bar.update(1)
    bar.close()  # tqdm redraws the final state here: already written by the last update
    lines = log.getvalue().splitlines()
    assert [line.split("|")[2].split()[0] for line in lines] == ["0/4", "1/4", "2/4", "3/4", "4/4"]
    assert "loss=0.250" in lines[-1]


def test_progress_in_images_not_batches():
    from verydeep.progress import progress_items

    log = io.StringIO()
    batches = [list(range(8)), list(range(8)), list(range(4))]  # 20 images in batches of 8
    seen = list(progress_items(batches, total=20, count=len, desc="center Q=256", file=log, mininterval=0))
    assert seen == batches
    lines = log.getvalue().splitlines()
    assert [line.split("|")[2].split()[0] for line in lines] == ["0/20", "8/20", "16/20", "20/20"]
    assert "img" in lines[-1]
