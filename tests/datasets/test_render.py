"""Renderer: pixel-centre convention, XYZ / depth consistency, z-buffer, near plane, night, textures."""
from __future__ import annotations

import time

import numpy as np
import pytest

from d2_sfm.datasets.render import (PinholeCamera, Quad, Scene, apply_night, camera_center, look_at, project,
                                    render)


def noise_texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_fronto_parallel_quad_maps_texels_to_pixels_exactly():
    """A quad filling the image at one texel per pixel: COLMAP pixel (j + .5, i + .5) sees texel (i, j)."""
    camera = PinholeCamera(64, 48, 100.0, 100.0, 32.0, 24.0)
    texture = noise_texture(48, 64)
    quad = Quad.create([-0.32, -0.24, 1.0], [0.64, 0, 0], [0, 0.48, 0], texture)
    rendering = render(Scene((quad,)), camera, np.hstack([np.eye(3), np.zeros((3, 1))]))
    np.testing.assert_array_equal(rendering.image, texture)
    np.testing.assert_allclose(rendering.depth, 1.0, rtol=1e-6)
    assert (rendering.quad_index == 0).all()


@pytest.mark.parametrize("texels_per_pixel", [1.4, 2.8, 5.5, 11.0])
def test_distant_textures_stay_where_they_project(texels_per_pixel):
    """At every mip level a texture feature renders where its texel projects. Sampling a pyrDown level
    at its own pixel centres put it up to 0.45 px off (texture shifted towards +s, +t), a bias that
    capped the sample scene's pose accuracy."""
    yy, xx = np.mgrid[:512, :512]
    s0, t0 = 200.5 / 512, 300.5 / 512  # the centre of texel (300, 200)
    blob = 255 * np.exp(-((xx + 0.5 - 512 * s0) ** 2 + (yy + 0.5 - 512 * t0) ** 2) / (2 * 24.0 ** 2))
    quad = Quad.create([-1, -1, 0], [2, 0, 0], [0, 2, 0], np.repeat(np.rint(blob)[..., None], 3, 2).astype(np.uint8))
    camera = PinholeCamera.from_hfov(320, 240, 60)
    distance = texels_per_pixel * 2 * camera.fx / 512  # the quad's 2 m hold 512 texels
    pose = look_at(np.array([0.1, 0.05, -distance]), np.array([0.1, 0.05, 0.0]), up=np.array([0.0, -1.0, 0.0]))
    image = render(Scene((quad,), (0, 0, 0)), camera, pose).image[..., 0].astype(np.float64)
    rows, cols = np.mgrid[:240, :320]
    centroid = np.array([(cols * image).sum(), (rows * image).sum()]) / image.sum() + 0.5  # COLMAP pixels
    projected = project(quad.point(np.array([s0]), np.array([t0])), camera, pose)[0][0]
    np.testing.assert_allclose(centroid, projected, atol=0.05)


def scene_and_view():
    ground = Quad.create([-5, -5, 0], [10, 0, 0], [0, 10, 0], noise_texture(64, 64, 1))
    wall = Quad.create([-3, 3, 0], [6, 0, 0], [0, 0, 3], noise_texture(32, 64, 2))
    box_face = Quad.create([-0.5, 1, 0], [1, 0, 0], [0, 0, 1], noise_texture(16, 16, 3))
    camera = PinholeCamera.from_hfov(160, 120, 70)
    pose = look_at(np.array([0.3, -3.0, 1.5]), np.array([0.0, 2.0, 0.8]), roll_deg=5)
    return Scene((ground, wall, box_face)), camera, pose


def test_projected_point_lands_on_pixel_whose_xyz_is_that_point():
    scene, camera, pose = scene_and_view()
    rendering = render(scene, camera, pose)
    wall = scene.quads[1]
    point = wall.point(np.array([0.8]), np.array([0.7]))  # right of the box, visible
    uv, z = project(point, camera, pose)
    col, row = np.floor(uv[0]).astype(int)
    assert rendering.quad_index[row, col] == 1
    pixel_size = z[0] / camera.fx
    assert np.linalg.norm(rendering.xyz[row, col] - point[0]) < 1.5 * pixel_size
    assert rendering.depth[row, col] == pytest.approx(z[0], rel=1e-3)


def test_depth_and_xyz_agree_and_reproject_to_pixel_centres():
    scene, camera, pose = scene_and_view()
    rendering = render(scene, camera, pose)
    valid = rendering.valid
    assert valid.mean() > 0.5 and np.isnan(rendering.depth[~valid]).all()
    rows, cols = np.nonzero(valid)
    uv, z = project(rendering.xyz[rows, cols].astype(np.float64), camera, pose)
    np.testing.assert_allclose(uv, np.stack([cols + 0.5, rows + 0.5], 1), atol=2e-3)
    np.testing.assert_allclose(z, rendering.depth[rows, cols], rtol=1e-5)
    on_ground = rendering.quad_index[rows, cols] == 0
    np.testing.assert_allclose(rendering.xyz[rows[on_ground], cols[on_ground], 2], 0, atol=1e-4)


def test_zbuffer_keeps_the_nearest_surface_whatever_the_order():
    scene, camera, pose = scene_and_view()
    forward = render(scene, camera, pose)
    backward = render(Scene(scene.quads[::-1]), camera, pose)
    np.testing.assert_array_equal(forward.image, backward.image)
    box_pixels = forward.quad_index == 2
    assert box_pixels.sum() > 50
    np.testing.assert_array_equal(backward.quad_index[box_pixels], 0)  # index 0 is the box now


def test_surfaces_behind_the_camera_or_crossing_the_near_plane():
    camera = PinholeCamera.from_hfov(80, 60, 60)
    pose = look_at(np.array([0.0, 0.0, 1.0]), np.array([0.0, 10.0, 1.0]))
    behind = Quad.create([-1, -5, 0], [2, 0, 0], [0, 0, 2], noise_texture(8, 8))
    assert not render(Scene((behind,)), camera, pose).valid.any()
    ground = Quad.create([-5, -5, 0], [10, 0, 0], [0, 15, 0], noise_texture(32, 32))  # under the camera
    rendering = render(Scene((ground,)), camera, pose)
    assert rendering.valid[-1].all() and not rendering.valid[0].any()  # horizon at the centre row
    assert np.nanmin(rendering.depth) >= 0.05


def test_look_at_and_camera_center():
    center, target = np.array([1.0, 2.0, 3.0]), np.array([4.0, 6.0, 3.0])
    pose = look_at(center, target)
    np.testing.assert_allclose(camera_center(pose), center)
    np.testing.assert_allclose(pose[:, :3] @ pose[:, :3].T, np.eye(3), atol=1e-12)
    uv, z = project(target[None], PinholeCamera(100, 80, 50, 50, 50, 40), pose)
    np.testing.assert_allclose(uv[0], [50, 40])
    assert z[0] == pytest.approx(5.0)
    below = project(np.array([[4.0, 6.0, 2.0]]), PinholeCamera(100, 80, 50, 50, 50, 40), pose)[0]
    assert below[0, 1] > 40  # world down (-z) is image down (+y)


def test_night_is_darker_deterministic_and_keeps_shape():
    image = noise_texture(48, 64)
    night = apply_night(image, np.random.default_rng(5))
    assert night.shape == image.shape and night.dtype == np.uint8
    assert night.mean() < 0.6 * image.mean()
    np.testing.assert_array_equal(night, apply_night(image, np.random.default_rng(5)))
    mean_rgb = night.reshape(-1, 3).mean(0)
    assert mean_rgb[0] > mean_rgb[2]  # sodium-lamp cast


def test_collage_textures_are_real_photos_and_deterministic():
    pytest.importorskip("skimage")
    from d2_sfm.datasets.textures import collage
    a = collage((200, 120), np.random.default_rng(7))
    b = collage((200, 120), np.random.default_rng(7))
    assert a.shape == (120, 200, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert a.std() > 20


def test_a_vga_street_view_renders_fast():
    pytest.importorskip("skimage")
    from d2_sfm.datasets.scenes import street_site
    site = street_site(np.random.default_rng(0))
    camera = PinholeCamera.from_hfov(640, 480, 60)
    pose = look_at(np.array([1.0, 5.0, 1.7]), np.array([-3.0, 15.0, 3.0]))
    render(site.scene, camera, pose)  # warm-up
    start = time.perf_counter()
    rendering = render(site.scene, camera, pose)
    assert time.perf_counter() - start < 1.0
    assert rendering.valid.mean() > 0.7
