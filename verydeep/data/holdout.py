"""A held-out part of the training images, for model selection (``data.holdout``).

A run with ``data.holdout`` set validates (its best.pt, the plateau rule) on training images it
never trains on, so that a choice made from its validation numbers does not look at the
validation set that evaluations and reports score. The split is per class (every class gives
the same share), drawn from the class's sorted file list by a generator seeded with
``data.holdout_seed`` and the class id: the same on every rank, on resume and on another
machine, whatever the other classes hold.
"""

from __future__ import annotations

import random

from verydeep.data.errors import DataError


def holdout_count(holdout: int | float, class_size: int) -> int:
    """How many of a class's ``class_size`` training images are held out: ``holdout`` images
    (an integer >= 1), or that fraction of them rounded (a number in (0, 1)); 0: none."""
    if not holdout:
        return 0
    return int(holdout) if holdout >= 1 else max(1, round(holdout * class_size))


def split_holdout(samples: list[tuple[str, int]], classes: list[str], holdout: int | float,
                  seed: int = 0) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(training samples, held-out samples) of ``samples`` ((path, label) pairs, labels indexing
    ``classes``). Each class keeps its samples' order; DataError when a class would keep no
    training image."""
    if not holdout:
        return list(samples), []
    by_class: dict[int, list[tuple[str, int]]] = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    held: set[str] = set()
    for label, members in sorted(by_class.items()):
        n = holdout_count(holdout, len(members))
        if n >= len(members):
            raise DataError(f"data.holdout={holdout}: class {classes[label]!r} has {len(members)} training images, "
                            f"holding out {n} would leave none to train on")
        paths = sorted(p for p, _ in members)
        held.update(random.Random(f"{seed}/{classes[label]}").sample(paths, n))
    return [s for s in samples if s[0] not in held], [s for s in samples if s[0] in held]
