"""Soft detection scores: official formula, normalisation, and no NaN on dead maps."""
import torch
import torch.nn.functional as F

from d2_sfm.training.soft_detection import soft_detection_scores


def official_soft_detection(batch):
    """The official SoftDetectionModule, verbatim maths (no guards)."""
    b = batch.size(0)
    batch = F.relu(batch)
    max_per_sample = torch.max(batch.view(b, -1), dim=1)[0]
    exp = torch.exp(batch / max_per_sample.view(b, 1, 1, 1))
    sum_exp = 9 * F.avg_pool2d(F.pad(exp, [1] * 4, mode="constant", value=1.0), 3, stride=1)
    local_max_score = exp / sum_exp
    depth_wise_max_score = batch / torch.max(batch, dim=1)[0].unsqueeze(1)
    score = torch.max(local_max_score * depth_wise_max_score, dim=1)[0]
    return score / torch.sum(score.view(b, -1), dim=1).view(b, 1, 1)


def test_matches_the_official_formula_where_it_is_defined():
    dense = torch.rand(2, 8, 5, 7) + 0.01  # strictly positive: no division by zero upstream
    assert torch.allclose(soft_detection_scores(dense), official_soft_detection(dense), atol=1e-7)


def test_each_image_sums_to_one_and_peaks_at_a_strong_isolated_response():
    dense = torch.randn(3, 16, 9, 11)
    dense[1, 4, 3, 5] = 50.0
    scores = soft_detection_scores(dense)
    assert scores.shape == (3, 9, 11)
    assert torch.allclose(scores.sum(dim=(1, 2)), torch.ones(3))
    assert scores[1].argmax() == 3 * 11 + 5


def test_all_zero_and_partly_dead_maps_give_no_nan():
    dense = torch.zeros(2, 4, 6, 6)
    dense[1, :, :3] = -1.0  # ReLU-dead half (all channels zero there)
    dense[1, 2, 4, 4] = 1.0
    scores = soft_detection_scores(dense)
    assert torch.isfinite(scores).all()
    assert torch.allclose(scores[0], torch.full((6, 6), 1 / 36))  # all zero: uniform
    assert torch.allclose(scores.sum(dim=(1, 2)), torch.ones(2))
    assert official_soft_detection(dense).isnan().any()  # what the guards prevent


def test_gradient_is_finite_on_dead_cells():
    dense = torch.zeros(1, 4, 5, 5)
    dense[0, 1, 2, 2] = 1.0
    dense.requires_grad_(True)
    soft_detection_scores(dense)[0, 2, 2].backward()
    assert torch.isfinite(dense.grad).all()
