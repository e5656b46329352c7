from __future__ import annotations

import numpy as np
import pytest

from d2_sfm.localization.estimation import PoseEstimationConfig
from d2_sfm.localization.pose_from_cutouts import CutoutLocalizationConfig, main, sample_points

from localization_scenes import HEIGHT, WIDTH, camera, look_at, project, write_scene_files


def grid(height=4, width=5):
    """XYZ whose value at row i, column j is (j, i, 10 i + j): easy to predict."""
    i, j = np.mgrid[0:height, 0:width].astype(float)
    return np.stack([j, i, 10 * i + j], axis=-1)


def test_integer_keypoints_read_their_pixel():
    xyz = grid()
    assert np.array_equal(sample_points(xyz, [[0, 0], [4, 3], [2, 1]]), [[0, 0, 0], [4, 3, 34], [2, 1, 12]])


def test_between_pixels_is_bilinear():
    assert np.allclose(sample_points(grid(), [[1.5, 2.5], [0.25, 0]]), [[1.5, 2.5, 26.5], [0.25, 0, 0.25]])


def test_nan_corner_falls_back_to_the_nearest_pixel():
    xyz = grid()
    xyz[2, 2] = np.nan
    assert np.allclose(sample_points(xyz, [[1.2, 1.3]]), [[1, 1, 11]])  # nearest (1, 1) is valid
    assert np.isnan(sample_points(xyz, [[1.8, 1.7]])).all()  # nearest (2, 2) is the NaN


def test_outside_the_scan_is_unknown():
    points = sample_points(grid(), [[-0.6, 0], [4.6, 0], [0, 3.6], [-0.4, 3.4]])
    assert np.isnan(points[:3]).all()
    assert np.array_equal(points[3], [0, 3, 30])  # within half a pixel of the border: nearest


def test_keypoints_of_a_larger_image_are_scaled_exactly():
    # image twice the scan's size: keypoint (1.5, 3.5) of the image is pixel (0.5, 1.5) of the scan
    assert np.allclose(sample_points(grid(), [[1.5, 3.5]], image_size=(10, 8)), [[0.5, 1.5, 15.5]])


def cutout_xyz(pose, depth_of_plane: float) -> np.ndarray:
    """Per-pixel world points of a fronto-parallel wall at `depth_of_plane` (pixel centres)."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH].astype(float)
    rays = camera().cam_from_img(np.c_[cols.ravel() + 0.5, rows.ravel() + 0.5])
    in_camera = np.c_[rays, np.ones(len(rays))] * depth_of_plane
    world = (in_camera - pose.translation) @ pose.rotation.matrix()  # R^T (X - t)
    return world.reshape(HEIGHT, WIDTH, 3)


def test_exact_data_gives_the_exact_pose(tmp_path):
    """No half-pixel slip: XYZcut at integer keypoints, +0.5 for the query camera."""
    rng = np.random.default_rng(3)
    cutout = "database/cutouts/DUC1/024/DUC_cutout_024_0_0.jpg"
    pose = look_at([0, 0, 0], [0, 5, 0])
    xyz = cutout_xyz(pose, 5.0)
    xyz[:40] = np.nan  # a strip the scanner did not see
    db_keypoints = np.unique(rng.integers([0, 0], [WIDTH, HEIGHT], (600, 2)), axis=0).astype(float)
    points = xyz[db_keypoints[:, 1].astype(int), db_keypoints[:, 0].astype(int)]
    query_pose = look_at([0.4, 0.8, 0.3], [0.2, 5, -0.2])
    uv, inside = project(query_pose, np.nan_to_num(points, nan=1e9))
    keep = np.flatnonzero(inside)
    query = "query/iphone7/IMG_0001.JPG"
    keypoints = {cutout: db_keypoints + 0.5, query: uv[keep]}  # given in COLMAP pixels
    features, matches = write_scene_files(tmp_path, keypoints, {(query, cutout): np.c_[np.arange(len(keep)), keep]})
    config = CutoutLocalizationConfig(PoseEstimationConfig(ransac_max_error=1.0))
    [result] = main({query: camera()}, {query: [cutout]}, features, matches, lambda name: xyz, config)
    assert result.success and result.num_inliers == result.num_correspondences > 300
    assert np.rad2deg(result.cam_from_world.rotation.angle_to(query_pose.rotation)) < 1e-5
    assert np.linalg.norm(result.cam_from_world.translation - query_pose.translation) < 1e-5


@pytest.mark.parametrize("min_matches, reason", [(10_000, "no cutout has 10000 matches")])
def test_cutouts_with_few_matches_are_skipped(tmp_path, min_matches, reason):
    cutout, query = "database/cutouts/DUC1/024/DUC_cutout_024_0_0.jpg", "query/iphone7/IMG_0001.JPG"
    keypoints = {cutout: np.full((5, 2), 10.5), query: np.full((5, 2), 20.5)}
    features, matches = write_scene_files(tmp_path, keypoints, {(query, cutout): np.c_[np.arange(5), np.arange(5)]})
    [result] = main({query: camera()}, {query: [cutout]}, features, matches, lambda name: np.zeros((4, 4, 3)),
                    CutoutLocalizationConfig(min_matches=min_matches))
    assert not result.success and result.failure.startswith(reason)
