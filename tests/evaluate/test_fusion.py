import pytest
import torch

from verydeep.evaluate.fusion import PosteriorAverage, average_posteriors

A = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
B = torch.tensor([[0.25, 0.75], [0.0, 1.0]])
C = torch.tensor([[1.0, 0.0], [0.5, 0.5]])


def test_average_posteriors_against_hand_computed_means():
    torch.testing.assert_close(average_posteriors([A, B]), torch.tensor([[0.375, 0.625], [0.5, 0.5]]))
    torch.testing.assert_close(average_posteriors([A, B, C]),
                               torch.tensor([[1.75 / 3, 1.25 / 3], [1.5 / 3, 1.5 / 3]]))
    # One division of the running sum: bitwise what the plain expression gives.
    assert torch.equal(average_posteriors([A, B, C]), ((A + B) + C) / 3)


def test_partial_sums_weigh_as_the_posteriors_they_hold():
    # Two nets of one group summed, then a third net: the mean over three, not over two groups.
    group = PosteriorAverage().add(A).add(B)
    assert group.count == 2
    fused = PosteriorAverage().merge(group).add(C)
    assert fused.count == 3
    assert torch.equal(fused.mean(), average_posteriors([A, B, C]))
    assert torch.equal(PosteriorAverage().add(A + B, count=2).add(C).mean(), fused.mean())
    # Merging an empty average changes nothing.
    assert torch.equal(fused.merge(PosteriorAverage()).mean(), average_posteriors([A, B, C]))


def test_inputs_are_not_modified_and_mistakes_are_refused():
    a = A.clone()
    PosteriorAverage().add(a).add(B).add(C).mean()
    assert torch.equal(a, A)
    with pytest.raises(ValueError, match="nothing to average"):
        PosteriorAverage().mean()
    with pytest.raises(ValueError, match="nothing to average"):
        average_posteriors([])
    with pytest.raises(ValueError, match="shapes"):
        PosteriorAverage().add(A).add(A[:, :1])
