"""Test scales Q: the shorter side test images are rescaled to (paper Sec. 4.1, 4.2).

The paper derives them from the training scale S of the net being tested (``data.scale_min``,
``data.scale_max`` of its recipe):

| training S | ``single`` | ``multi`` |
|---|---|---|
| fixed S | Q = S | S-32, S, S+32 |
| jittered [Smin, Smax] | (Smin+Smax)/2 | Smin, (Smin+Smax)/2, Smax |

e.g. 384 and 256, 384, 512 for the paper's [256, 512]. The paper's 32 is a seventh of its
224 crop; nets trained on other crops (``data.crop_size``) get the same fraction of theirs
(9 for a 64 crop), so shrunk images keep the paper's relative spread of scales. The resolver
takes one net's data settings, so nets of an ensemble trained at different S each get their
own Q (:func:`net_scale_sets`).
"""

from __future__ import annotations

from collections.abc import Sequence

from verydeep.data.config import MAX_IMAGE_SIDE

SCALE_SETS = ("single", "multi")
PAPER_CROP, PAPER_STEP = 224, 32  # multi-scale Q = S - 32, S, S + 32 for the paper's 224 crops


def fixed_scale_step(crop_size: int) -> int:
    """The spread of the multi-scale Q around a fixed S: 32 for the paper's 224 crop, the same
    fraction of other crops."""
    return max(1, round(PAPER_STEP * crop_size / PAPER_CROP))


def check_scales(scales: Sequence[int]) -> tuple[int, ...]:
    """``scales`` as a tuple of ints; raises unless it is a non-empty list of integers from 1 to
    ``MAX_IMAGE_SIDE`` (the data section's bound on any image side, and its reason)."""
    try:
        values = () if isinstance(scales, str) else tuple(int(q) for q in scales)
    except (TypeError, ValueError):
        values = ()
    if not values or not 1 <= min(values) <= max(values) <= MAX_IMAGE_SIDE:
        raise ValueError(f"test scales must be positive integers (from 1 to {MAX_IMAGE_SIDE} pixels), "
                         f"got {scales!r}")
    return values


def resolve_scales(data_cfg, which: str | Sequence[int] = "single") -> list[int]:
    """The test scales Q of a net trained with ``data_cfg``: ``which`` is ``"single"``,
    ``"multi"`` (the paper's sets, above) or an explicit list of Q (checked and returned)."""
    if not isinstance(which, str):
        return list(check_scales(which))
    if which not in SCALE_SETS:
        raise ValueError(f"test scales must be a list of Q, 'single' or 'multi', got {which!r}")
    lo, hi = int(data_cfg.scale_min), int(data_cfg.scale_max)
    multi = which == "multi"
    if lo == hi:
        step = fixed_scale_step(int(getattr(data_cfg, "crop_size", PAPER_CROP)))
        return [lo - step, lo, lo + step] if multi else [lo]
    mid = (lo + hi) // 2
    return [lo, mid, hi] if multi else [mid]


def net_scale_sets(nets_data: Sequence, which) -> list[list[int]]:
    """Each net's test scales: ``which`` is "single" / "multi" (each from its own training S),
    one list of Q for every net, or a list of such lists, one per net (in the nets' order)."""
    if isinstance(which, str):
        return [resolve_scales(data, which) for data in nets_data]
    which = list(which)
    if which and all(isinstance(q, (list, tuple)) for q in which):
        if len(which) != len(nets_data):
            raise ValueError(f"{len(which)} sets of test scales for {len(nets_data)} nets: give one per net")
        return [resolve_scales(data, q) for data, q in zip(nets_data, which)]
    return [list(check_scales(which)) for _ in nets_data]
