"""images: the official resize rule, keypoints back to original pixels, decoded arrays to RGB uint8."""
import numpy as np
import pytest

from d2_sfm.images import ImageError, ResizedImage, resize, resized_size, to_rgb_uint8


@pytest.mark.parametrize("size, limits, expected", [
    ((1000, 500), (None, None), (1000, 500)),  # no limits
    ((1000, 500), (800, None), (800, 400)),  # max_edge only
    ((1000, 500), (None, 900), (600, 300)),  # max_sum_edges only
    ((1000, 500), (800, 900), (600, 300)),  # both: max_edge first, then the sum
    ((300, 200), (1600, 2800), (300, 200)),  # small images are never enlarged
    ((5000, 1), (100, None), (100, 1)),  # never below 1 px
])
def test_resized_size_follows_the_official_rule(size, limits, expected):
    assert resized_size(*size, *limits) == expected


def test_to_original_maps_pixel_centres():
    resized = ResizedImage(np.zeros((50, 100, 3), np.uint8), original_size=(200, 100))  # half size
    xy = np.array([[0.0, 0.0], [99.0, 49.0], [-0.5, -0.5]], np.float32)
    # centre of the first resized pixel covers original pixels 0 and 1: their middle is 0.5
    np.testing.assert_allclose(resized.to_original(xy), [[0.5, 0.5], [198.5, 98.5], [-0.5, -0.5]])
    same = ResizedImage(np.zeros((100, 200, 3), np.uint8), original_size=(200, 100))
    np.testing.assert_array_equal(same.to_original(xy), xy)


def test_resize_keeps_same_size_images_and_reaches_the_size():
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    assert resize(image, (6, 4)) is image
    assert resize(image, (3, 2)).shape == (2, 3, 3)
    assert resize(image, (12, 8)).shape == (8, 12, 3)


def test_to_rgb_uint8_on_grey_bgra_16_bit_and_float():
    grey = np.array([[0, 128], [255, 7]], np.uint8)
    rgb = to_rgb_uint8(grey)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert (rgb == grey[:, :, None]).all()
    bgra = np.zeros((1, 2, 4), np.uint8)
    bgra[0, 0] = (255, 0, 0, 10)  # blue, almost transparent: alpha is dropped
    bgra[0, 1] = (0, 0, 255, 255)  # red
    assert to_rgb_uint8(bgra).tolist() == [[[0, 0, 255], [255, 0, 0]]]
    bgr16 = np.array([[[0, 257 * 100, 65535]]], np.uint16)
    assert to_rgb_uint8(bgr16).tolist() == [[[255, 100, 0]]]
    assert to_rgb_uint8(np.array([[0.0, 0.5, 2.0]], np.float32)).tolist() == [[[0] * 3, [128] * 3, [255] * 3]]


def test_to_rgb_uint8_refuses_other_types_and_shapes_naming_the_file():
    with pytest.raises(ImageError, match="x.tif"):
        to_rgb_uint8(np.zeros((2, 2), np.int32), "x.tif")
    with pytest.raises(ImageError, match="y.png"):
        to_rgb_uint8(np.zeros((2, 2, 2), np.uint8), "y.png")
