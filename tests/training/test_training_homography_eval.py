"""MMA maths and the homography data layout."""
import numpy as np
import pytest

from d2_sfm.training.homography_eval import PASS_FAIL_PAIRS, list_pairs, match_errors, mma


def test_mma_counts_matches_within_each_threshold():
    assert mma(np.array([0.5, 1.5, 2.5, 20.0]), (1, 2, 3)) == (0.25, 0.5, 0.75)
    assert mma(np.zeros(0), (1, 2)) == (0.0, 0.0)


def test_match_errors_use_mutual_nearest_neighbours_and_the_homography():
    desc = np.eye(3, dtype=np.float32)
    xy0 = np.array([[0, 0], [10, 0], [0, 10]], np.float32)
    shift = np.array([[1, 0, 5], [0, 1, 0], [0, 0, 1.0]])
    xy1 = xy0 + [5, 0] + [[0, 0], [0, 2], [0, 0]]  # second keypoint 2 px off
    np.testing.assert_allclose(match_errors(xy0, desc, xy1, desc[::-1][::-1], shift), [0, 2, 0], atol=1e-6)


@pytest.mark.realdata
def test_shared_sequences_are_listed(shared_data):
    pairs = {p.name: p for p in list_pairs(shared_data / "homography")}
    assert set(PASS_FAIL_PAIRS) <= set(pairs)
    assert len(pairs) == 15 + 15  # 3 sequences x 5 pairs + 15 EVD pairs
    assert all(p.path1.is_file() and p.path2.is_file() and p.homography.shape == (3, 3) for p in pairs.values())
