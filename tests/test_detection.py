"""Detection maths on hand-built feature maps."""
import torch

from d2_sfm.detection import (Detections, channel_maxima, derivatives, detect, is_local_maximum, is_not_edge,
                              keep_refined, neighbourhoods, newton_step, sample_descriptors)
from dense_detection_reference import hard_detection_dense


def gaussian_blob(height, width, ci, cj, sigma_i=1.5, sigma_j=1.5):
    i = torch.arange(height, dtype=torch.float64)[:, None]
    j = torch.arange(width, dtype=torch.float64)[None, :]
    return torch.exp(-((i - ci) ** 2) / (2 * sigma_i ** 2) - ((j - cj) ** 2) / (2 * sigma_j ** 2))


def test_known_peak_is_found_in_its_channel():
    dense = torch.zeros(4, 20, 24, dtype=torch.float64)
    dense[2] = gaussian_blob(20, 24, 7, 11)
    detections = detect(dense)
    assert detections.channel.tolist() == [2]
    assert detections.cell.tolist() == [[7, 11]]


def test_peak_not_max_over_channels_is_rejected():
    dense = torch.zeros(2, 20, 24, dtype=torch.float64)
    dense[0] = gaussian_blob(20, 24, 7, 11)
    dense[1] = 2 * gaussian_blob(20, 24, 7, 11, 3, 3)  # stronger everywhere around the peak
    assert detect(dense).channel.tolist() == [1]


def test_edge_is_rejected_but_blob_is_kept():
    dense = torch.zeros(1, 30, 30, dtype=torch.float64)
    dense[0] = gaussian_blob(30, 30, 15, 15, sigma_i=1.0, sigma_j=12.0)  # a ridge along j
    neighbours, _ = neighbourhoods(dense, torch.tensor([0]), torch.tensor([15]), torch.tensor([15]))
    assert not is_not_edge(derivatives(neighbours)).item()
    assert len(detect(dense).cell) == 0
    dense[0] = gaussian_blob(30, 30, 15, 15, sigma_i=2.0, sigma_j=2.5)
    assert len(detect(dense).cell) == 1


def test_refinement_recovers_subpixel_offset_of_a_quadratic():
    # An exact quadratic peak at (10.3, 12.8): one Newton step lands on it.
    i = torch.arange(25, dtype=torch.float64)[:, None]
    j = torch.arange(25, dtype=torch.float64)[None, :]
    dense = (100 - 2 * (i - 10.3) ** 2 - 1.5 * (j - 12.8) ** 2 + 0.5 * (i - 10.3) * (j - 12.8))[None]
    detections = detect(dense)
    assert detections.cell.tolist() == [[10, 13]]
    assert torch.allclose(detections.position, torch.tensor([[10.3, 12.8]], dtype=torch.float64), atol=1e-9)
    assert keep_refined(detections).tolist() == [True]


def test_large_offset_is_dropped_by_the_half_cell_rule():
    # f(j) = -(j - 0.7)^2 sampled at -1, 0, 1 gives a Newton step of exactly +0.7 cell
    neighbours = torch.tensor([[0.0, 0.0, 0.0, -2.89, -0.49, -0.09, 0.0, 0.0, 0.0]], dtype=torch.float64)
    step = newton_step(derivatives(neighbours))
    assert abs(step[0, 1].item() - 0.7) < 1e-9
    cell = torch.tensor([[5, 5], [5, 5]])
    position = torch.tensor([[5.2, 5.45], [5.1, 5.7]], dtype=torch.float64)
    assert keep_refined(Detections(torch.tensor([0, 1]), cell, position)).tolist() == [True, False]


def test_flat_zero_region_never_fires():
    dense = torch.zeros(8, 10, 10)
    assert len(detect(dense).cell) == 0
    assert not hard_detection_dense(dense).any()


def test_candidates_equal_dense_reference_on_random_maps():
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        dense = torch.relu(torch.randn(16, 23, 31, generator=generator, dtype=torch.float64))
        reference = hard_detection_dense(dense).nonzero()
        detections = detect(dense)
        ours = torch.cat([detections.channel[:, None], detections.cell], 1)
        assert torch.equal(ours, reference)


def test_local_max_at_the_border_uses_minus_infinity_padding():
    dense = torch.zeros(1, 6, 6, dtype=torch.float64)
    dense[0, 0, 0] = 1.0  # corner peak: a local max, like max_pool2d with -inf padding
    channel, i, j = channel_maxima(dense)
    local_max = is_local_maximum(*neighbourhoods(dense, channel, i, j))
    assert [0, 0] in torch.stack([i[local_max], j[local_max]], 1).tolist()


def test_bilinear_descriptors_and_out_of_map_rule():
    dense = torch.zeros(2, 4, 5, dtype=torch.float64)
    dense[0] = torch.arange(20, dtype=torch.float64).view(4, 5)
    dense[1] = 1.0
    position = torch.tensor([[1.5, 2.25], [0.0, 0.0], [3.2, 1.0], [-0.1, 2.0]], dtype=torch.float64)
    descriptors, valid = sample_descriptors(dense, position)
    assert valid.tolist() == [True, True, False, False]
    expected = torch.tensor([1.5 * 5 + 2.25, 1.0], dtype=torch.float64)
    assert torch.allclose(descriptors[0], expected / expected.norm())
    assert torch.allclose(descriptors.norm(dim=1), torch.ones(2, dtype=torch.float64))
