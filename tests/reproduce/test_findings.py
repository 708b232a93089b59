"""The findings' paired test (McNemar's exact) and verdicts, on hand-built per-image correctness
with hand-computed p-values."""

import pytest

from verydeep.reproduce.findings import (
    HELD,
    NOT_HELD,
    NOT_SHOWN,
    PARTLY,
    WITHIN_NOISE,
    binomial_two_sided,
    check_findings,
    mcnemar_exact,
)
from verydeep.reproduce.report import paper_numbers


def test_exact_binomial_by_hand():
    assert binomial_two_sided(0, 5) == pytest.approx(2 / 32)  # 0.0625: 5 to 0 is not beyond 0.05
    assert binomial_two_sided(6, 6) == pytest.approx(2 / 64)  # 0.03125
    # 8 vs 2: 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 2 * 56 / 1024
    assert binomial_two_sided(2, 10) == pytest.approx(0.109375)
    assert binomial_two_sided(8, 10) == pytest.approx(0.109375)
    assert binomial_two_sided(3, 6) == 1.0 and binomial_two_sided(0, 0) == 1.0


def test_mcnemar_counts_only_the_discordant_images():
    first = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 0]
    second = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0]  # 8 right only by first, 2 only by second
    assert mcnemar_exact(first, second) == (8, 2, pytest.approx(0.109375))
    with pytest.raises(ValueError, match="same images"):
        mcnemar_exact([1, 0], [1])


def _cells(errors_and_correct):
    results = {k: (100 * (1 - sum(v) / len(v)), 0.0) for k, v in errors_and_correct.items()}
    return results, dict(errors_and_correct)


A, ALRN, B, D, E = ((3, n, "S256") for n in ("A", "A-LRN", "B", "D", "E"))


def _depth(b_vs_a, d_vs_b, e_vs_b):
    """Deeper-is-better cells from (only-the-better-net-right, only-the-worse-net-right) counts
    of each pair, in three blocks of images where the other pairs agree; 100 images in all, the
    rest right for every net. Each pattern is (A, B, D, E) right."""
    patterns = ([((0, 1, 1, 1), b_vs_a[0]), ((1, 0, 0, 0), b_vs_a[1]),
                 ((0, 0, 1, 0), d_vs_b[0]), ((1, 1, 0, 1), d_vs_b[1]),
                 ((0, 0, 0, 1), e_vs_b[0]), ((1, 1, 1, 0), e_vs_b[1])])
    images = [p for p, count in patterns for _ in range(count)]
    images += [(1, 1, 1, 1)] * (100 - len(images))
    return _cells({key: [bool(img[i]) for img in images] for i, key in enumerate((A, B, D, E))})


def test_verdicts_against_noise():
    # all three the paper's way, each 6 to 0 discordant (p = 0.031): held
    results, correct = _depth((6, 0), (6, 0), (6, 0))
    (_, depth, *_) = check_findings(results, correct)
    assert [c.only_better for c in depth.comparisons] == [6, 6, 6]
    assert all(c.p_value == pytest.approx(2 / 64) for c in depth.comparisons[1:])
    assert depth.verdict == HELD
    # one of them 5 to 0 (p = 0.0625): the paper's way, within noise
    results, correct = _depth((6, 0), (5, 0), (6, 0))
    assert check_findings(results, correct)[1].verdict == WITHIN_NOISE
    # one the other way within noise (1 to 2, p = 1): partly
    results, correct = _depth((6, 0), (1, 2), (6, 0))
    assert check_findings(results, correct)[1].verdict == PARTLY
    # one the other way beyond noise (0 to 6): did not hold, whatever the others
    results, correct = _depth((6, 0), (0, 6), (6, 0))
    finding = check_findings(results, correct)[1]
    assert finding.verdict == NOT_HELD
    assert "gap -6.0" in finding.comparisons[1].describe() and "p=0.031" in finding.comparisons[1].describe()
    # none the paper's way, all within noise: not shown
    results, correct = _depth((1, 1), (1, 2), (0, 0))
    assert check_findings(results, correct)[1].verdict == NOT_SHOWN


def test_lrn_does_not_help_holds_unless_it_helps_beyond_noise():
    def lrn(only_a, only_lrn):
        a, alrn = [True] * 50, [True] * 50
        for i in range(only_a):
            alrn[i] = False
        for i in range(only_a, only_a + only_lrn):
            a[i] = False
        return check_findings(*_cells({A: a, ALRN: alrn}))[0]

    assert lrn(0, 0).verdict == HELD  # an exact tie: no gain
    assert lrn(2, 3).verdict == HELD  # A-LRN better, within noise (p = 1)
    assert lrn(6, 0).verdict == HELD  # A-LRN worse beyond noise: it does not help
    helps = lrn(0, 6)  # A-LRN better beyond noise (p = 0.031)
    assert helps.verdict == NOT_HELD and helps.comparisons[0].p_value == pytest.approx(2 / 64)


def test_the_papers_numbers_without_per_image_results_are_within_noise():
    findings = check_findings(paper_numbers())
    assert [f.verdict for f in findings] == [HELD] + [WITHIN_NOISE] * 6
    assert all(c.p_value is None and "no paired test" in c.describe() for f in findings for c in f.comparisons)
