"""Real-data check of the default extractor on HPatches v_graffiti 1->2 (native 800x640)."""
import numpy as np
import pytest
import torch

from d2_sfm.matching import mutual_nearest_neighbours


def homography_errors(keypoints0, keypoints1, matches, homography):
    projected = np.c_[keypoints0[matches[:, 0]], np.ones(len(matches))] @ homography.T
    projected = projected[:, :2] / projected[:, 2:]
    return np.linalg.norm(projected - keypoints1[matches[:, 1]], axis=1)


@pytest.mark.realdata
def test_graffiti_pair_1_2_single_scale(shared_data, hed_extractor_factory):
    sequence = shared_data / "homography" / "hpatches_v_graffiti"
    extractor = hed_extractor_factory()  # default settings: max edge 1600, so native 800x640
    features0 = extractor.extract_path(sequence / "1.ppm")
    features1 = extractor.extract_path(sequence / "2.ppm")
    assert features0.image_size == (800, 640)
    matches0, _ = mutual_nearest_neighbours(torch.from_numpy(features0.descriptors),
                                            torch.from_numpy(features1.descriptors))
    index = np.flatnonzero(matches0.numpy() >= 0)
    matches = np.stack([index, matches0.numpy()[index]], axis=1)
    errors = homography_errors(features0.keypoints, features1.keypoints, matches,
                               np.loadtxt(sequence / "H_1_2"))
    mma3 = float((errors <= 3).mean())
    print(f"graffiti 1->2: {len(features0)}/{len(features1)} keypoints, {len(matches)} matches, MMA@3 {mma3:.3f}")
    assert len(matches) >= 500
    assert mma3 >= 0.30
