"""Synthetic homography pairs: exact correspondences under their own warp, determinism."""
import numpy as np
import pytest
import torch

from d2_sfm.training.synthetic_pairs import (PhotometricConfig, SyntheticPairs, WarpConfig,
                                             homography_correspondences, photometric, render, sample_views)


def bilinear(image, ij):
    """Sample (H, W, C) float at sub-pixel (N, 2) (i, j) (integer = pixel centre)."""
    i0, j0 = np.floor(ij[:, 0]).astype(int), np.floor(ij[:, 1]).astype(int)
    wi, wj = (ij[:, 0] - i0)[:, None], (ij[:, 1] - j0)[:, None]
    i1, j1 = np.minimum(i0 + 1, image.shape[0] - 1), np.minimum(j0 + 1, image.shape[1] - 1)
    return ((1 - wi) * (1 - wj) * image[i0, j0] + (1 - wi) * wj * image[i0, j1]
            + wi * (1 - wj) * image[i1, j0] + wi * wj * image[i1, j1])


def test_correspondences_are_exact_under_the_rendered_warp():
    # The source encodes its own coordinates: rendering it shows which source point each pixel sees.
    height, width, size = 400, 500, 128
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = np.stack([x, y, np.zeros_like(x)], axis=2)
    rng = np.random.default_rng(3)
    for _ in range(5):
        source_from_1, source_from_2 = sample_views((height, width), WarpConfig(crop_size=size), rng)
        view1, view2 = render(ramp, source_from_1, size), render(ramp, source_from_2, size)
        corr = homography_correspondences(source_from_1, source_from_2, (height, width), size)
        assert len(corr) > 64
        pixels1 = 8 * corr.cells1.numpy() + 3.5
        seen1 = bilinear(view1, pixels1)[:, :2]  # source x, y seen at the image-1 pixel
        seen2 = bilinear(view2, corr.pixels2.numpy().astype(np.float64))[:, :2]
        np.testing.assert_allclose(seen2, seen1, atol=0.02)  # same source point, to 1/50 px
        assert (corr.pixels2.numpy() >= 0).all() and (corr.pixels2.numpy() <= size - 1).all()


def test_pairs_are_deterministic_and_well_formed():
    photo = (np.random.default_rng(0).random((300, 320, 3)) * 255).astype(np.uint8)
    dataset = SyntheticPairs([photo], length=4, seed=7, warp=WarpConfig(crop_size=64))
    first, again = dataset[2], dataset[2]
    assert torch.equal(first.image1, again.image1) and torch.equal(first.correspondences.pixels2,
                                                                   again.correspondences.pixels2)
    assert first.image1.shape == first.image2.shape == (3, 64, 64)
    assert first.image1.dtype == torch.float32 and 0 <= first.image1.min() and first.image1.max() <= 255
    assert not torch.equal(dataset.item(1, 2).image1, first.image1)  # another epoch, another pair


def test_photometric_changes_keep_shape_and_range():
    image = np.full((32, 32, 3), 128, np.uint8)
    config = PhotometricConfig(night_probability=1.0, grey_probability=1.0, blur_probability=1.0)
    out = photometric(image, config, np.random.default_rng(0))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert out.mean() < 90  # night darkening
    assert np.ptp(out.astype(int) - out[..., :1], axis=2).max() == 0  # grey: equal channels


def test_bundled_photos_load_offline():
    pytest.importorskip("skimage")
    from d2_sfm.training.synthetic_pairs import SOURCE_PHOTOS, load_source_photos

    photos = load_source_photos()
    assert len(photos) == len(SOURCE_PHOTOS)
    assert all(p.ndim == 3 and p.shape[2] == 3 and p.dtype == np.uint8 for p in photos)
