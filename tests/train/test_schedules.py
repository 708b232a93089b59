import math

import pytest

from verydeep.training_config import ScheduleConfig
from verydeep.train.schedules import LRSchedule


def _plateau(**kw):
    return LRSchedule(ScheduleConfig(name="plateau", **kw), base_lr=0.01, steps_per_epoch=10, epochs=100)


def test_plateau_divides_at_the_right_epochs_and_stops_after_the_third_decrease():
    sched = _plateau(patience=1, max_decreases=3)
    # val top-1 error after each epoch
    errors = [80, 70, 65, 66, 66, 60, 61, 62, 55, 55, 56, 54, 54, 54]
    actions = [sched.on_validation(e) for e in errors]
    assert actions == [
        "improved", "improved", "improved", "wait", "decrease",   # epoch 5: 2 without improvement
        "improved", "wait", "decrease",                           # epoch 8
        "improved", "wait", "decrease",                           # epoch 11: third decrease
        "improved", "wait", "stop",                               # next plateau stops the run
    ]
    assert sched.decreases == 3
    assert sched.lr(0) == pytest.approx(0.01 * 0.1**3)


def test_plateau_lr_sequence_and_patience_zero():
    sched = _plateau(patience=0, max_decreases=2)
    lrs = []
    for e in [50, 50, 40, 45]:
        sched.on_validation(e)
        lrs.append(sched.lr(123))
    assert lrs == pytest.approx([0.01, 0.001, 0.001, 0.0001])
    assert sched.on_validation(45) == "stop"


def test_plateau_threshold():
    sched = _plateau(patience=0, threshold=1.0)
    sched.on_validation(50)
    assert sched.on_validation(49.5) == "decrease"  # 0.5 points is not an improvement
    assert sched.on_validation(40) == "improved"


def test_plateau_state_roundtrip():
    a = _plateau()
    for e in [5, 6, 7]:
        a.on_validation(e)
    b = _plateau()
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict() and b.lr(0) == a.lr(0)


def test_step_and_multistep():
    s = LRSchedule(ScheduleConfig(name="step", step_size=2, gamma=0.5), 1.0, steps_per_epoch=3, epochs=10)
    assert [s.lr(i * 3) for i in range(6)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    m = LRSchedule(ScheduleConfig(name="multistep", milestones=[1, 3], gamma=0.1), 1.0, 4, 10)
    assert [m.lr(e * 4 + 1) for e in range(5)] == pytest.approx([1, 0.1, 0.1, 0.01, 0.01])


def test_cosine_with_warmup():
    cfg = ScheduleConfig(name="cosine", warmup_epochs=1, warmup_start_factor=0.0, min_lr=0.0)
    s = LRSchedule(cfg, 1.0, steps_per_epoch=4, epochs=3)  # 12 steps, 4 warmup
    lrs = [s.lr(i) for i in range(12)]
    assert lrs[:4] == pytest.approx([0.0, 0.25, 0.5, 0.75])
    expected = [0.5 * (1 + math.cos(math.pi * (i - 4) / 8)) for i in range(4, 12)]
    assert lrs[4:] == pytest.approx(expected)
    assert lrs[4] == 1.0 and all(a > b for a, b in zip(lrs[4:], lrs[5:]))


def test_cosine_respects_iteration_cap():
    s = LRSchedule(ScheduleConfig(name="cosine"), 1.0, steps_per_epoch=10, epochs=10, max_iterations=20)
    assert s.total_steps == 20
    assert s.lr(20) == pytest.approx(0.0)


def test_unknown_schedule_named():
    with pytest.raises(ValueError, match="'poly'"):
        ScheduleConfig(name="poly")
