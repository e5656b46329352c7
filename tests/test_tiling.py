"""Tiled inference reproduces the full-image dense map and features (random weights, odd sizes)."""
import pytest
import torch

from d2_sfm import tiling
from d2_sfm.extractor import ExtractionConfig
from d2_sfm.model import D2Net, feature_map_size
from d2_sfm.pyramid import add_upsampled, extract_keypoints
from d2_sfm.tiling import DenseNetwork, dense_features_tiled, spans


@pytest.fixture(scope="module")
def random_net():
    torch.manual_seed(0)
    return D2Net().eval()


def random_image(height, width, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return 60 * torch.randn(1, 3, height, width, generator=generator)


@pytest.mark.parametrize("pixels", [8, 9, 47, 203, 3202])
@pytest.mark.parametrize("tile_size", [16, 28, 1600])
def test_spans_partition_the_map_and_start_on_the_stride(pixels, tile_size):
    cells = feature_map_size(pixels, pixels)[0]
    found = spans(pixels, tile_size)
    assert [s.first for s in found[1:]] == [s.stop for s in found[:-1]]
    assert found[0].first == 0 and found[-1].stop == cells
    for span in found:
        assert span.crop_start % 4 == 0 and 0 <= span.crop_start and span.crop_stop <= pixels
        assert span.stop - span.first <= max(tile_size // 4, 1)
        assert span.crop_start <= 4 * span.first - 42 or span.crop_start == 0  # receptive field
        assert span.crop_stop >= 4 * (span.stop - 1) + 50 or span.crop_stop == pixels


@torch.inference_mode()
def test_tiled_map_equals_full_map_on_odd_size(random_net):
    image = random_image(150, 203)
    full = random_net(image)
    assert (len(spans(150, 80)), len(spans(203, 80))) == (2, 3)
    tiled = DenseNetwork(random_net, 80)(image)
    assert tiled.shape == full.shape
    torch.testing.assert_close(tiled, full, rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_a_smaller_halo_breaks_exactness(random_net, monkeypatch):
    image = random_image(101, 30)  # three tiles along the rows, one along the columns
    full = random_net(image)
    assert torch.allclose(dense_features_tiled(random_net, image, 32), full, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(tiling, "HALO_BEFORE", tiling.HALO_BEFORE - 1)
    assert not torch.allclose(dense_features_tiled(random_net, image, 32), full, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(tiling, "HALO_BEFORE", tiling.HALO_BEFORE + 1)
    monkeypatch.setattr(tiling, "HALO_AFTER", tiling.HALO_AFTER - 1)
    assert not torch.allclose(dense_features_tiled(random_net, image, 32), full, rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_tiled_multiscale_features_equal_untiled(random_net):
    image = random_image(75, 101, seed=2)  # scale 2: 150 x 202, tiled 2 x 3; scale 1: 1 x 2
    untiled = extract_keypoints(random_net, image, (0.5, 1.0, 2.0))
    tiled = extract_keypoints(DenseNetwork(random_net, 80), image, (0.5, 1.0, 2.0))
    assert len(untiled.xy) > 20 and (untiled.scales == 0.5).any()
    assert len(tiled.xy) == len(untiled.xy)
    for name in ("xy", "scores", "descriptors", "scales"):
        torch.testing.assert_close(getattr(tiled, name), getattr(untiled, name), rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_network_reads_the_model_weights_live():
    model = D2Net().eval()
    network = DenseNetwork(model, tile_size=None)
    image = random_image(40, 44)
    before = network(image)
    with torch.no_grad():
        model.dense_feature_extraction.model[21].bias.add_(1.0)
    torch.testing.assert_close(network(image), model(image))
    assert not torch.allclose(network(image), before)


def test_in_place_pyramid_sum_equals_one_shot_sum():
    generator = torch.Generator().manual_seed(3)
    coarse = torch.randn(1, 130, 9, 14, generator=generator)
    dense = torch.randn(1, 130, 19, 29, generator=generator)
    expected = dense + torch.nn.functional.interpolate(coarse, size=(19, 29), mode="bilinear",
                                                       align_corners=True)
    with torch.no_grad():
        assert torch.equal(add_upsampled(dense.clone(), coarse), expected)


def test_tile_size_is_validated_and_not_recorded():
    assert "tile_size" not in ExtractionConfig().as_attributes()
    assert ExtractionConfig(tile_size=None).tile_size is None
    with pytest.raises(ValueError, match="tile_size"):
        ExtractionConfig(tile_size=8)
