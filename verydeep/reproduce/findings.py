"""The paper's findings (Sec. 4), each checked on a reproduction's numbers and judged against
the noise of the evaluation set.

A finding is a set of comparisons of top-1 errors, each in the direction the paper reports
(e.g. "C worse than D" at every training scale). Two nets are scored on the same images, so
each comparison is a paired test on their per-image correctness: McNemar's exact test, a
two-sided binomial test (p = 1/2) on the discordant images (right by one net, wrong by the
other). Their difference is exactly the gap in errors times the number of images; the images
both nets get right or wrong say nothing about which is better. A comparison is *beyond
noise* when p < ``ALPHA``.

Verdicts, in the order they are decided:

- *did not hold*: some comparison goes against the paper's direction, beyond noise;
- *held*: every comparison goes the paper's way, beyond noise;
- *held within noise*: every comparison goes the paper's way, some within noise;
- *partly held*: some go the paper's way, the others (ties or against) within noise;
- *not shown*: none goes the paper's way, all within noise.

"Does not help" findings (LRN) claim no gain: such a comparison holds unless the addition is
better beyond noise, and goes against the paper only then.

The tests read per-image correctness only (``Correct``: one boolean per image, the same
images in the same order for every cell), never a posteriors file: the runner derives them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from verydeep.reproduce.tables import (
    FC_ONLY_D,
    FUSION_SEVEN,
    SEVEN_NETS,
    TABLE5_PROTOCOLS,
    fusion_de,
)

ALPHA = 0.05  # significance level of each paired test
Key = tuple[int, str, str]  # (table, row, column)
Results = Mapping[Key, tuple[float, float]]  # -> (top-1, top-5 error, %)
Correct = Mapping[Key, Sequence[bool]]  # -> top-1 correct per image, the same images for every key

HELD, WITHIN_NOISE, PARTLY, NOT_HELD, NOT_SHOWN = (
    "held", "held within noise", "partly held", "did not hold", "not shown (within noise)")
VERDICTS = (HELD, WITHIN_NOISE, PARTLY, NOT_HELD, NOT_SHOWN, "not evaluated")


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of ``k`` successes in ``n`` fair coin flips (the symmetric
    distribution's tails: twice the smaller tail, at most 1)."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**n)  # Python's ints are exact; the division rounds once


def mcnemar_exact(first: Sequence[bool], second: Sequence[bool]) -> tuple[int, int, float]:
    """(images only ``first`` gets right, images only ``second`` gets right, McNemar's exact
    two-sided p-value) of two nets' per-image correctness on the same images."""
    if len(first) != len(second):
        raise ValueError(f"a paired test needs the same images: {len(first)} vs {len(second)} per-image results")
    only_first = sum(1 for a, b in zip(first, second) if a and not b)
    only_second = sum(1 for a, b in zip(first, second) if b and not a)
    return only_first, only_second, binomial_two_sided(only_first, only_first + only_second)


@dataclass
class Comparison:
    better: str  # the label the paper finds better (lower error); for a no-gain claim, the baseline
    worse: str  # for a no-gain claim: the addition the paper finds no better (A-LRN)
    better_error: float
    worse_error: float
    images: int
    p_value: float | None = None  # McNemar's exact test; None: no per-image results to pair
    only_better: int | None = None  # images right only by the paper's better net
    only_worse: int | None = None
    no_gain: bool = False  # the paper's claim is "``worse`` does not help", not "``better`` is better"

    @property
    def gap(self) -> float:
        """Top-1 error points in the paper's direction (positive: the paper's way)."""
        return self.worse_error - self.better_error

    @property
    def beyond_noise(self) -> bool:
        return self.p_value is not None and self.p_value < ALPHA

    @property
    def paper_way(self) -> bool:
        """Points the paper's way (any gap); a no-gain claim: the addition is not better."""
        return self.gap >= 0 if self.no_gain else self.gap > 0

    @property
    def against(self) -> bool:
        """Against the paper's direction, beyond noise."""
        return self.beyond_noise and (self.gap < 0 if self.no_gain else self.gap <= 0)

    @property
    def holds(self) -> bool:
        """As the paper says, beyond noise (a no-gain claim: no gain beyond noise)."""
        return not self.against if self.no_gain else (self.gap > 0 and self.beyond_noise)

    def describe(self) -> str:
        sign = "<" if self.gap > 0 else (">" if self.gap < 0 else "=")
        test = "no paired test" if self.p_value is None else f"p={_p(self.p_value)}"
        noise = "" if self.beyond_noise else ", within noise"
        return (f"{self.better} {self.better_error:.1f} {sign} {self.worse} {self.worse_error:.1f} "
                f"(gap {self.gap:+.1f}, {test}{noise})")


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


@dataclass
class Finding:
    claim: str
    where: str  # the paper's evidence
    comparisons: list[Comparison]
    note: str = ""

    @property
    def verdict(self) -> str:
        cs = self.comparisons
        if not cs:
            return "not evaluated"
        if any(c.against for c in cs):
            return NOT_HELD
        if all(c.holds for c in cs):
            return HELD
        if all(c.paper_way for c in cs):
            return WITHIN_NOISE
        return PARTLY if any(c.paper_way for c in cs) else NOT_SHOWN


SCALE_LABELS = {"S256": "S=256", "S384": "S=384", "multiscale": "S=[256;512]"}


def _label(key: Key) -> str:
    table, row, column = key
    if table in (3, 4):
        return f"{row} {SCALE_LABELS[column]} {'1 test scale' if table == 3 else '3 test scales'}"
    if table == 5:
        return f"{row} {column}"
    return f"D+E fusion ({row.split(', ', 1)[1]})" if row.startswith("D/") else "7-net fusion"


def compare(results: Results, correct: Correct | None, better: Key, worse: Key, no_gain: bool = False) -> Comparison:
    """One comparison of two evaluated cells, paired-tested where both have per-image results."""
    correct = correct or {}
    p = only_b = only_w = None
    images = 0
    if better in correct and worse in correct:
        only_b, only_w, p = mcnemar_exact(correct[better], correct[worse])
        images = len(correct[better])
    return Comparison(_label(better), _label(worse), results[better][0], results[worse][0], images,
                      p_value=p, only_better=only_b, only_worse=only_w, no_gain=no_gain)


def _compare(results: Results, correct: Correct | None, pairs, no_gain: bool = False) -> list[Comparison]:
    """Comparisons (better key, worse key) whose both cells were evaluated."""
    return [compare(results, correct, b, w, no_gain) for b, w in pairs if b in results and w in results]


def check_findings(results: Results, correct: Correct | None = None) -> list[Finding]:
    """The paper's seven findings on ``results`` (our top-1 errors), each comparison tested on
    ``correct`` (per-image top-1 correctness of each cell; without it, no comparison is beyond
    noise)."""
    cols = ("S256", "S384", "multiscale")
    t3 = lambda net, col="S256": (3, net, col)
    c = correct
    findings = [
        Finding("LRN does not help: A-LRN is no better than A", "Table 3, S=256",
                _compare(results, c, [(t3("A"), t3("A-LRN"))], no_gain=True),
                note="the paper's A-LRN is 0.1 worse than A; the claim holds unless A-LRN is better beyond noise"),
        Finding("Deeper is better: A > B > D, and E < B", "Table 3, S=256",
                _compare(results, c, [(t3("B"), t3("A")), (t3("D"), t3("B")), (t3("E"), t3("B"))])),
        Finding("1x1 convs (C) are worse than 3x3 convs (D) of the same depth", "Table 3, every training scale",
                _compare(results, c, [(t3("D", col), t3("C", col)) for col in cols])),
        Finding("Scale jittering at training beats fixed S", "Table 3, nets C, D, E",
                _compare(results, c, [(t3(n, "multiscale"), t3(n, col)) for n in "CDE" for col in ("S256", "S384")])),
        Finding("Multi-scale testing beats single-scale testing", "Table 4 vs Table 3",
                _compare(results, c, [((4, n, col), (3, n, col)) for n in "BCDE" for col in cols])),
        Finding("Dense + multi-crop beats dense and multi-crop alone", "Table 5",
                _compare(results, c, [((5, n, "dense+multicrop"), (5, n, p)) for n in "DE"
                                      for p in TABLE5_PROTOCOLS[:2]])),
        Finding("Fusion beats its members", "Table 6 vs Tables 5 and 4",
                _compare(results, c, [((6, fusion_de(p), "fusion"), (5, n, p)) for p in TABLE5_PROTOCOLS for n in "DE"]
                         + [((6, FUSION_SEVEN, "fusion"), (4, *run.split("_")[1:3])) for run in SEVEN_NETS if run != FC_ONLY_D]),
                note="the 7 nets against their members with a Table 4 cell (the FC-only jittered D has none)"),
    ]
    return findings
