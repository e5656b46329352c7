"""Candidate-only detection and refinement equal the official dense computation.

The reference below transcribes the official `HandcraftedLocalizationModule` (gradient and Hessian
by 3x3 conv2d with zero padding over every channel and cell, Newton step via the inverse Hessian)
and the `process_multiscale` steps for one level (dense hard detection, nonzero, |step| < 0.5,
bilinear descriptors with the all-corners-inside rule, score = value at the cell).
"""
import pytest
import torch
import torch.nn.functional as F

from d2_sfm import detection
from d2_sfm.detection import detect
from d2_sfm.pyramid import detect_level
from dense_detection_reference import hard_detection_dense

FILTERS = {
    "di": [[0, -0.5, 0], [0, 0, 0], [0, 0.5, 0]],
    "dj": [[0, 0, 0], [-0.5, 0, 0.5], [0, 0, 0]],
    "dii": [[0, 1.0, 0], [0, -2.0, 0], [0, 1.0, 0]],
    "djj": [[0, 0, 0], [1.0, -2.0, 1.0], [0, 0, 0]],
    "dij": [[0.25, 0, -0.25], [0, 0, 0], [-0.25, 0, 0.25]],
}


def dense_refinement_reference(dense):
    """Official HandcraftedLocalizationModule on a (C, h, w) map: (2, C, h, w) Newton steps."""
    x = dense[:, None]
    d = {k: F.conv2d(x, dense.new_tensor(v)[None, None], padding=1)[:, 0] for k, v in FILTERS.items()}
    det = d["dii"] * d["djj"] - d["dij"] * d["dij"]
    inv_00, inv_01, inv_11 = d["djj"] / det, -d["dij"] / det, d["dii"] / det
    return torch.stack([-(inv_00 * d["di"] + inv_01 * d["dj"]), -(inv_01 * d["di"] + inv_11 * d["dj"])])


def official_level_reference(dense):
    """One single-scale level as in the official process_multiscale: (position (K, 2), channel,
    cell (K, 2), descriptors (K, C), scores (K,))."""
    channel, i, j = hard_detection_dense(dense).nonzero().T
    step = dense_refinement_reference(dense)[:, channel, i, j].T
    keep = (step.abs() < 0.5).all(dim=1)
    channel, i, j, step = channel[keep], i[keep], j[keep], step[keep]
    position = torch.stack([i, j], 1).to(dense.dtype) + step
    height, width = dense.shape[1:]
    top, left = position.floor().long().T
    bottom, right = position.ceil().long().T
    valid = (top >= 0) & (left >= 0) & (bottom < height) & (right < width)
    position, channel, i, j = position[valid], channel[valid], i[valid], j[valid]
    wi, wj = (position - position.floor()).T
    top, left, bottom, right = top[valid], left[valid], bottom[valid], right[valid]
    descriptors = ((1 - wi) * (1 - wj) * dense[:, top, left] + (1 - wi) * wj * dense[:, top, right]
                   + wi * (1 - wj) * dense[:, bottom, left] + wi * wj * dense[:, bottom, right])
    return position, channel, torch.stack([i, j], 1), F.normalize(descriptors, dim=0).T, dense[channel, i, j]


def assert_detect_matches_reference(dense):
    reference = hard_detection_dense(dense).nonzero()
    detections = detect(dense)
    assert torch.equal(torch.cat([detections.channel[:, None], detections.cell], 1), reference)
    step = dense_refinement_reference(dense)[:, reference[:, 0], reference[:, 1], reference[:, 2]].T
    torch.testing.assert_close(detections.position, reference[:, 1:].to(dense.dtype) + step)
    return len(reference)


def assert_level_matches_reference(dense):
    keypoints, banned = detect_level(dense, None, detection.EDGE_THRESHOLD)
    position, channel, cell, descriptors, scores = official_level_reference(dense)
    torch.testing.assert_close(keypoints.xy, position)
    torch.testing.assert_close(keypoints.descriptors, descriptors)
    torch.testing.assert_close(keypoints.scores, scores)
    assert torch.equal(banned, hard_detection_dense(dense).any(dim=0))
    return len(position)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_relu_maps(dtype):
    generator = torch.Generator().manual_seed(0)
    total = 0
    for channels, height, width in ((16, 23, 31), (150, 17, 12), (3, 40, 41), (1, 9, 7)):
        dense = torch.relu(torch.randn(channels, height, width, generator=generator, dtype=dtype))
        total += assert_detect_matches_reference(dense)
        assert_level_matches_reference(dense)
    assert total > 100


def test_random_maps_without_relu_and_smooth_maps():
    generator = torch.Generator().manual_seed(1)
    signed = torch.randn(40, 25, 33, generator=generator, dtype=torch.float64)
    smooth = F.avg_pool2d(torch.relu(torch.randn(70, 1, 40, 48, generator=generator)), 5, 1, 2)[:, 0]
    for dense in (signed, smooth):
        assert assert_detect_matches_reference(dense) > 10
        assert assert_level_matches_reference(dense) > 5


def test_channel_chunks_do_not_change_the_order(monkeypatch):
    generator = torch.Generator().manual_seed(2)
    dense = torch.relu(torch.randn(100, 20, 22, generator=generator))
    monkeypatch.setattr(detection, "CHANNEL_CHUNK", 7)
    assert assert_detect_matches_reference(dense) > 10


def test_hand_built_ties_plateaus_borders_and_saddles():
    dense = torch.zeros(4, 16, 18, dtype=torch.float64)
    i = torch.arange(16, dtype=torch.float64)[:, None]
    j = torch.arange(18, dtype=torch.float64)[None, :]
    blob = torch.exp(-((i - 5.3) ** 2 + (j - 6.6) ** 2) / 4)
    dense[0] = blob
    dense[1] = blob  # exact tie across channels: fires in both, as officially
    dense[2, 0, 0] = dense[2, 15, 17] = dense[2, 0, 9] = 2.0  # peaks on the corners and the border
    dense[2, 10:12, 12:14] = 1.5  # a 2x2 plateau: every cell is a local max, det decides
    dense[3] = 0.3 * ((i - 12) ** 2 - (j - 3) ** 2).clamp(-3, 3) * (((i - 12).abs() < 3) & ((j - 3).abs() < 3))
    count = assert_detect_matches_reference(dense)
    assert count >= 2
    assert_level_matches_reference(dense)
    detections = detect(dense)
    assert {0, 1} <= set(detections.channel.tolist())


def test_flat_zero_map_fires_nowhere_and_constant_map_only_at_the_corners():
    assert not hard_detection_dense(torch.zeros(5, 8, 9)).any()
    assert len(detect(torch.zeros(5, 8, 9)).cell) == 0
    # Zero padding makes the corners of a constant map peaks, in every (tied) channel, officially.
    constant = torch.full((5, 8, 9), 3.0)
    assert assert_detect_matches_reference(constant) == 5 * 4
    assert {tuple(c) for c in detect(constant).cell.tolist()} == {(0, 0), (0, 8), (7, 0), (7, 8)}
    assert_level_matches_reference(constant)
