"""Test scales Q: the shorter side test images are rescaled to (paper Sec. 4.1, 4.2).

The paper derives them from the training scale S of the net being tested (``data.scale_min``,
``data.scale_max`` of its recipe):

| training S | ``single`` | ``multi`` |
|---|---|---|
| fixed S | Q = S | S-32, S, S+32 |
| jittered [Smin, Smax] | (Smin+Smax)/2 | Smin, (Smin+Smax)/2, Smax |

e.g. 384 and 256, 384, 512 for the paper's [256, 512]. The resolver takes one net's data
settings, so nets of an ensemble trained at different S can each be given their own Q.
"""

from __future__ import annotations

from collections.abc import Sequence

SCALE_SETS = ("single", "multi")


def check_scales(scales: Sequence[int]) -> tuple[int, ...]:
    """``scales`` as a tuple of ints; raises unless it is a non-empty list of positive integers."""
    try:
        values = () if isinstance(scales, str) else tuple(int(q) for q in scales)
    except (TypeError, ValueError):
        values = ()
    if not values or min(values) < 1:
        raise ValueError(f"test scales must be positive integers, got {scales!r}")
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
        return [lo - 32, lo, lo + 32] if multi else [lo]
    mid = (lo + hi) // 2
    return [lo, mid, hi] if multi else [mid]
