"""pyramid on hand-built maps: cell -> pixel mapping, the coarse-level ban, and the level loop.

Maps are exact quadratics, for which D2-Net's finite-difference Newton step is exact: the refined
position is the true peak, so expected keypoints can be written down.
"""
import pytest
import torch

from d2_sfm import detection
from d2_sfm.model import feature_map_size
from d2_sfm.pyramid import EMPTY_CHANNELS, Keypoints, detect_level, extract_keypoints, level_to_input


def paraboloid(height: int, width: int, peak_i: float, peak_j: float, top: float = 100.0) -> torch.Tensor:
    """(1, height, width) map top - |(i, j) - peak|^2 (float64, one channel)."""
    i = torch.arange(height, dtype=torch.float64)[:, None]
    j = torch.arange(width, dtype=torch.float64)[None, :]
    return (top - (i - peak_i) ** 2 - (j - peak_j) ** 2)[None]


def test_level_to_input_maps_cells_to_pixel_centres():
    cells = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    # same size: pixel = 4 * cell + 1.5, returned as (x, y)
    assert level_to_input(cells, (64, 80), (64, 80)).tolist() == [[1.5, 1.5], [9.5, 5.5]]
    # half-size level (align_corners): times (S - 1) / (s - 1) = 2 on both axes here
    assert level_to_input(cells, (50, 60), (99, 119)).tolist() == [[3.0, 3.0], [19.0, 11.0]]


def test_detect_level_refines_to_the_peak_and_bans_its_cell():
    dense = paraboloid(11, 10, 3.25, 6.75)
    keypoints, banned = detect_level(dense, None, detection.EDGE_THRESHOLD)
    assert keypoints.xy.tolist() == [[3.25, 6.75]]  # (i, j) cells: the exact peak
    assert keypoints.scores.tolist() == [100.0 - 0.25 ** 2 - 0.25 ** 2]  # the value at the cell (3, 7)
    assert keypoints.descriptors.tolist() == [[1.0]]
    assert banned.nonzero().tolist() == [[3, 7]]


def test_a_coarse_detection_bans_the_finer_cells_it_covers():
    dense = paraboloid(8, 8, 3.25, 4.0)  # detected at cell (3, 4)
    coarse = torch.zeros(4, 4, dtype=torch.bool)
    coarse[1, 2] = True  # nearest upsampling x2: covers cells (2..3, 4..5)
    keypoints, banned = detect_level(dense, coarse, detection.EDGE_THRESHOLD)
    assert len(keypoints.xy) == 0
    assert banned.nonzero().tolist() == [[2, 4], [2, 5], [3, 4], [3, 5]]
    elsewhere = torch.zeros(4, 4, dtype=torch.bool)
    elsewhere[0, 0] = True
    keypoints, banned = detect_level(dense, elsewhere, detection.EDGE_THRESHOLD)
    assert keypoints.xy.tolist() == [[3.25, 4.0]]
    assert banned.nonzero().tolist() == [[0, 0], [0, 1], [1, 0], [1, 1], [3, 4]]


def test_the_ban_is_recorded_before_the_step_filter():
    # two equal cells (5, 4) and (5, 5): both fire, both Newton steps are exactly 0.5, so both are
    # dropped, but both cells are banned (official order)
    dense = paraboloid(11, 10, 5.0, 4.5)
    keypoints, banned = detect_level(dense, None, detection.EDGE_THRESHOLD)
    assert len(keypoints.xy) == 0
    assert banned.nonzero().tolist() == [[5, 4], [5, 5]]


def peak_network(image: torch.Tensor) -> torch.Tensor:
    """A stand-in network: (1, 3, H, W) -> (1, 1, h, w) paraboloid peaking at 40% / 60% of the map."""
    height, width = feature_map_size(*image.shape[2:])
    return paraboloid(height, width, 0.4 * (height - 1) + 0.1, 0.6 * (width - 1) - 0.15)[None].float()


def test_single_scale_keypoints_are_in_input_pixels():
    keypoints = extract_keypoints(peak_network, torch.zeros(1, 3, 64, 80))
    # map (15, 19): peak at (5.7, 10.65) cells -> pixel 4 * cell + 1.5
    torch.testing.assert_close(keypoints.xy, torch.tensor([[4 * 10.65 + 1.5, 4 * 5.7 + 1.5]]))
    assert keypoints.scales.tolist() == [1.0]
    assert keypoints.descriptors.shape == (1, 1)


def test_levels_too_small_for_the_network_are_skipped():
    keypoints = extract_keypoints(peak_network, torch.zeros(1, 3, 8, 8), scales=(0.5, 1.0))
    assert keypoints.xy.tolist() == [[1.5, 1.5]]  # only the 1 x 1 map of scale 1 ran
    assert keypoints.scales.tolist() == [1.0]
    # the score is divided by the levels actually summed (one), as without the skipped level
    single = extract_keypoints(peak_network, torch.zeros(1, 3, 8, 8), scales=(1.0,))
    assert keypoints.scores.tolist() == single.scores.tolist() == [pytest.approx(100.0 - 0.1 ** 2 - 0.15 ** 2)]
    empty = extract_keypoints(peak_network, torch.zeros(1, 3, 7, 7))
    assert len(empty.xy) == 0 and empty.descriptors.shape == (0, EMPTY_CHANNELS)


def test_keypoints_cat_and_input_shape():
    one = Keypoints(torch.ones(1, 2), torch.ones(1), torch.ones(1, 3), torch.ones(1))
    both = one.cat(Keypoints.empty(3, torch.device("cpu"))).cat(one)
    assert both.xy.shape == (2, 2) and both.descriptors.shape == (2, 3)
    with pytest.raises(ValueError, match="expected one image"):
        extract_keypoints(peak_network, torch.zeros(3, 64, 80))
