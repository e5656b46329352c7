"""The detection-weighted triplet margin ranking loss."""
import pytest
import torch
import torch.nn.functional as F

from d2_sfm.training.losses import Correspondences, batch_loss, grid_cells, hardest_negative, pair_loss
from d2_sfm.training.network import cell_to_pixel
from d2_sfm.training.soft_detection import soft_detection_scores


def identity_correspondences(height, width):
    cells = grid_cells(height, width, torch.device("cpu"))
    return Correspondences(cells, cell_to_pixel(cells.float()))


def test_zero_for_perfectly_separated_descriptors():
    height, width = 12, 12  # 144 cells >= 128 correspondences
    dense = torch.eye(height * width).reshape(height * width, height, width)  # one-hot per cell
    scores = torch.full((height, width), 1.0 / (height * width))
    loss, accuracy, used = pair_loss(dense, dense.clone(), scores, scores, identity_correspondences(height, width))
    assert used == 144 and accuracy == 1.0
    assert loss.item() == pytest.approx(0.0, abs=1e-6)  # positive 0, hardest negative 2, margin 1


def test_identical_descriptors_cost_margin_plus_nothing():
    dense = torch.ones(8, 12, 12)  # every cell the same descriptor: positive = negative = 0
    scores = torch.rand(12, 12)
    loss, accuracy, _ = pair_loss(dense, dense, scores, scores, identity_correspondences(12, 12))
    assert loss.item() == pytest.approx(1.0, abs=1e-5) and accuracy == 0.0


def test_gradient_flows_to_descriptors_and_scores():
    torch.manual_seed(0)
    dense1 = torch.randn(1, 16, 12, 12, requires_grad=True)
    dense2 = torch.randn(1, 16, 12, 12, requires_grad=True)
    scores1 = torch.rand(1, 12, 12, requires_grad=True)
    scores2 = torch.rand(1, 12, 12, requires_grad=True)
    result = batch_loss(dense1, dense2, scores1, scores2, [identity_correspondences(12, 12)])
    result.loss.backward()
    for tensor in (dense1, dense2, scores1, scores2):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0 and torch.isfinite(tensor.grad).all()


def test_gradient_through_soft_detection_reaches_the_dense_map_via_scores():
    torch.manual_seed(1)
    dense = torch.randn(2, 16, 12, 12, requires_grad=True)
    scores = soft_detection_scores(dense)
    descriptors = dense.detach()  # only the score path carries gradient
    result = batch_loss(descriptors[:1], descriptors[1:], scores[:1], scores[1:], [identity_correspondences(12, 12)])
    result.loss.backward()
    assert dense.grad.abs().sum() > 0


def test_hardest_negative_ignores_cells_inside_the_safe_radius():
    descriptors = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=1)  # cells 0, 1, 2
    cells = torch.tensor([[0, 0], [0, 4], [0, 5]])
    anchor = descriptors[:1]
    # true cell (0, 0): cell (0, 4) is inside radius 4 (ignored although identical), (0, 5) is outside
    assert hardest_negative(anchor, cells[:1], descriptors, cells, 4).item() == pytest.approx(2.0)
    assert hardest_negative(anchor, cells[:1], descriptors, cells, 3).item() == pytest.approx(0.0)


def test_correspondences_off_the_map_are_dropped_and_few_give_no_loss():
    dense = torch.randn(8, 16, 16)
    scores = torch.rand(16, 16)
    valid = identity_correspondences(16, 16)
    pixels2 = valid.pixels2.clone()
    pixels2[:20, 0] = -8.0  # above the image: nearest cell -1
    pixels2[20:40, 1] = 8 * 16 + 4.0  # right of the last cell
    pixels2[40] = torch.tensor([-0.4, 127.4])  # inside the image's last pixel: rounds onto cell (0, 15)
    result = pair_loss(dense, dense, scores, scores, Correspondences(valid.cells1, pixels2))
    assert result[2] == 256 - 40
    few = Correspondences(valid.cells1[:127], valid.pixels2[:127])
    assert pair_loss(dense, dense, scores, scores, few) is None


def test_batch_without_valid_pair_is_no_gradient():
    dense = torch.randn(2, 8, 12, 12)
    scores = torch.rand(2, 12, 12)
    empty = Correspondences(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2))
    result = batch_loss(dense, dense, scores, scores, [empty, empty])
    assert result.loss is None and result.valid_pairs == 0
    mixed = batch_loss(dense, dense, scores, scores, [empty, identity_correspondences(12, 12)])
    assert mixed.valid_pairs == 1 and torch.isfinite(mixed.loss)
