from types import SimpleNamespace as NS

import pytest

from verydeep.evaluate.scales import check_scales, resolve_scales

FIXED = NS(scale_min=256, scale_max=256)
JITTERED = NS(scale_min=256, scale_max=512)


def test_the_papers_scale_sets():
    # Fixed S: Q = S, or S-32, S, S+32.
    assert resolve_scales(FIXED, "single") == [256]
    assert resolve_scales(FIXED, "multi") == [224, 256, 288]
    # Jittered S in [Smin, Smax]: the midpoint, or Smin, mid, Smax.
    assert resolve_scales(JITTERED, "single") == [384]
    assert resolve_scales(JITTERED, "multi") == [256, 384, 512]
    # An odd sum rounds the midpoint down: (257 + 512) // 2 = 384.
    assert resolve_scales(NS(scale_min=257, scale_max=512), "single") == [384]
    assert resolve_scales(FIXED) == [256]  # single by default


def test_explicit_scales_are_checked_and_returned():
    assert resolve_scales(FIXED, [320, 384]) == [320, 384]
    assert resolve_scales(JITTERED, (512,)) == [512]
    assert check_scales([24, 32]) == (24, 32)
    for bad in ([], [0], [256, -32], ["x"], None, [256, 4097], [99999999]):  # 4096: MAX_IMAGE_SIDE
        with pytest.raises(ValueError, match="positive integers"):
            resolve_scales(FIXED, bad)
    with pytest.raises(ValueError, match="positive integers"):
        check_scales("256")  # not the digits 2, 5, 6
    with pytest.raises(ValueError, match="'single' or 'multi'"):
        resolve_scales(FIXED, "many")


def test_each_net_gets_the_scales_of_its_own_training_scale():
    # An ensemble of a fixed-S and a jittered-S net: "multi" means different Q for each.
    assert [resolve_scales(net, "multi") for net in (FIXED, JITTERED)] == [[224, 256, 288], [256, 384, 512]]
