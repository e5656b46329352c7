"""Held-out validation pairs: fixed, made from validation photos only, and their ground truth scores
an oracle matcher at MMA@3 = 1 (so the pixel conventions of depth and homography truth are right)."""
import numpy as np
import pytest

from d2_sfm.training import validation

pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def pairs():
    return validation.validation_pairs(rendered=2, homographies=1, size=128)


def oracle(pair):
    """Features that match a grid of image-1 points to their true image-2 positions."""
    i, j = np.meshgrid(np.arange(8, 120, 8.0), np.arange(8, 120, 8.0), indexing="ij")
    xy0 = np.stack([j.ravel(), i.ravel()], axis=1)
    xy1, known = pair.ground_truth(xy0)
    xy0, xy1 = xy0[known], xy1[known]
    descriptors = np.eye(len(xy0), dtype=np.float32)
    calls = iter([(xy0, descriptors), (xy1, descriptors)])
    return lambda image: next(calls)


def test_oracle_matches_score_one_and_shifted_ones_zero(pairs):
    assert [p.name for p in pairs] == ["rendered 0", "rendered 1", "homography 0"]
    for pair in pairs:
        score, count = validation.pair_mma3(oracle(pair), pair)
        assert count >= 20 and score == 1.0, pair.name
        features = oracle(pair)
        first = features(None)
        xy1, d1 = features(None)
        shifted = iter([first, (xy1 + 5.0, d1)])
        assert validation.pair_mma3(lambda image: next(shifted), pair)[0] == 0.0


def test_pairs_are_fixed(pairs):
    again = validation.validation_pairs(rendered=2, homographies=1, size=128)
    assert all(np.array_equal(a.image1, b.image1) and np.array_equal(a.image2, b.image2)
               for a, b in zip(pairs, again))
