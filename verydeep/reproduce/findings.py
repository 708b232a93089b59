"""The paper's findings (Sec. 4), each checked on a reproduction's numbers.

A finding is a set of comparisons of top-1 errors in the direction the paper reports (e.g.
"C worse than D" at every training scale); it holds when every comparison it could make goes
the paper's way. Each comparison also says whether its gap exceeds the noise of the
evaluation set: two standard errors of the difference of two error rates measured on the same
N images (taken as independent: sqrt(p1 (1 - p1) / N + p2 (1 - p2) / N), an upper bound for
paired errors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from verydeep.reproduce.tables import (
    FUSION_DE,
    FUSION_SEVEN,
    SEVEN_NETS,
    TABLE5_PROTOCOLS,
)

# (table, row, column) -> (top-1, top-5); images: how many the evaluation had
Results = dict[tuple[int, str, str], tuple[float, float]]


@dataclass
class Comparison:
    better: str  # the label the paper finds better (lower error)
    worse: str
    better_error: float
    worse_error: float
    images: int

    @property
    def holds(self) -> bool:
        return self.better_error < self.worse_error

    @property
    def beyond_noise(self) -> bool:
        p1, p2 = self.better_error / 100, self.worse_error / 100
        se = math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / max(1, self.images)) * 100
        return abs(self.worse_error - self.better_error) > 2 * se

    def describe(self) -> str:
        sign = "<" if self.holds else (">" if self.better_error > self.worse_error else "=")
        noise = "" if self.beyond_noise else ", within noise"
        return f"{self.better} {self.better_error:.1f} {sign} {self.worse} {self.worse_error:.1f}{noise}"


@dataclass
class Finding:
    claim: str
    where: str  # the paper's evidence
    comparisons: list[Comparison]
    note: str = ""

    @property
    def verdict(self) -> str:
        if not self.comparisons:
            return "not evaluated"
        held = sum(c.holds for c in self.comparisons)
        if held == len(self.comparisons):
            return "held"
        return "partly held" if held else "did not hold"


SCALE_LABELS = {"S256": "S=256", "S384": "S=384", "multiscale": "S=[256;512]"}


def _label(key: tuple[int, str, str]) -> str:
    table, row, column = key
    if table in (3, 4):
        return f"{row} {SCALE_LABELS[column]} {'1 test scale' if table == 3 else '3 test scales'}"
    if table == 5:
        return f"{row} {column}"
    return "D+E fusion" if row.startswith("D/") else "7-net fusion"


def _compare(results: Results, images: int, pairs) -> list[Comparison]:
    """Comparisons (better key, worse key) whose both cells were evaluated."""
    out = []
    for better, worse in pairs:
        if better in results and worse in results:
            out.append(Comparison(_label(better), _label(worse), results[better][0], results[worse][0], images))
    return out


def check_findings(results: Results, images: int) -> list[Finding]:
    """The paper's seven findings on ``results`` (our top-1 errors), evaluated on ``images``."""
    cols = ("S256", "S384", "multiscale")
    t3 = lambda net, col="S256": (3, net, col)
    findings = [
        Finding("LRN does not help: A-LRN is no better than A", "Table 3, S=256",
                _compare(results, images, [(t3("A"), t3("A-LRN"))]),
                note="the paper's A-LRN is 0.1 worse than A: a tie; the comparison asks for A-LRN not better"),
        Finding("Deeper is better: A > B > D, and E < B", "Table 3, S=256",
                _compare(results, images, [(t3("B"), t3("A")), (t3("D"), t3("B")), (t3("E"), t3("B"))])),
        Finding("1x1 convs (C) are worse than 3x3 convs (D) of the same depth", "Table 3, every training scale",
                _compare(results, images, [(t3("D", c), t3("C", c)) for c in cols])),
        Finding("Scale jittering at training beats fixed S", "Table 3, nets C, D, E",
                _compare(results, images, [(t3(n, "multiscale"), t3(n, c)) for n in "CDE" for c in ("S256", "S384")])),
        Finding("Multi-scale testing beats single-scale testing", "Table 4 vs Table 3",
                _compare(results, images, [((4, n, c), (3, n, c)) for n in "BCDE" for c in cols])),
        Finding("Dense + multi-crop beats dense and multi-crop alone", "Table 5",
                _compare(results, images, [((5, n, "dense+multicrop"), (5, n, p)) for n in "DE"
                                           for p in TABLE5_PROTOCOLS[:2]])),
        Finding("Fusion beats its members", "Table 6 vs Tables 5 and 4",
                _compare(results, images, [((6, FUSION_DE, "fusion"), (5, n, "dense+multicrop")) for n in "DE"]
                         + [((6, FUSION_SEVEN, "fusion"), (4, n, c)) for n, c in SEVEN_NETS])),
    ]
    return findings
