from __future__ import annotations

import json

import numpy as np
import pycolmap

from d2_sfm.localization.estimation import (PoseEstimationConfig, QueryLog, QueryResult, colmap_points,
                                            estimate_pose, results_name)

from localization_scenes import camera, look_at, project


def test_colmap_points_adds_half_a_pixel():
    # HDF5: integer = pixel centre; COLMAP: centre of the top-left pixel is (0.5, 0.5)
    assert np.array_equal(colmap_points(np.array([[0, 0], [10, 3]], np.float32)), [[0.5, 0.5], [10.5, 3.5]])


def test_estimate_pose_recovers_an_exact_pose_despite_outliers():
    rng = np.random.default_rng(1)
    points = rng.uniform([-2, 4, -1.5], [2, 8, 1.5], (200, 3))
    truth = look_at([0.3, 0, 0.2], [0, 6, 0])
    uv, inside = project(truth, points)
    uv, points = uv[inside], points[inside]
    uv[:40] = rng.uniform([0, 0], [640, 480], (40, 2))  # gross outliers
    estimate = estimate_pose(uv, points, camera(), PoseEstimationConfig(ransac_max_error=2.0))
    assert estimate is not None
    assert estimate.num_inliers >= len(uv) - 40
    assert not estimate.inlier_mask[:40].any()
    assert np.rad2deg(estimate.cam_from_world.rotation.angle_to(truth.rotation)) < 1e-4
    assert np.linalg.norm(estimate.cam_from_world.translation - truth.translation) < 1e-5


def test_estimate_pose_fails_cleanly_with_too_few_points():
    assert estimate_pose(np.zeros((3, 2)), np.ones((3, 3)), camera()) is None
    assert estimate_pose(np.zeros((0, 2)), np.zeros((0, 3)), camera()) is None


def test_query_result_json_round_trip():
    pose = look_at([1, 2, 3], [0, 0, 0])
    result = QueryResult("query/day/a.jpg", pose, 42, 100, 5, ["db/1.jpg"], None, 0.25)
    back = QueryResult.from_json(json.loads(json.dumps(result.to_json())))
    assert back.name == result.name and back.num_inliers == 42 and back.db_used == ["db/1.jpg"]
    assert np.allclose(back.cam_from_world.matrix(), pose.matrix())
    failed = QueryResult.from_json(QueryResult("q.jpg", failure="no pose").to_json())
    assert failed.cam_from_world is None and failed.failure == "no pose" and not failed.success


def test_query_log_resumes_and_restarts_when_settings_change(tmp_path):
    path = tmp_path / "poses.jsonl"
    log = QueryLog(path, {"threshold": 12})
    log.add(QueryResult("a.jpg", pycolmap.Rigid3d(), 10))
    log.add(QueryResult("b.jpg", failure="no match"))
    assert set(QueryLog(path, {"threshold": 12}).done) == {"a.jpg", "b.jpg"}
    with open(path, "a") as f:
        f.write('{"name": "c.jpg", "cam_fro')  # a line cut by a crash
    assert set(QueryLog(path, {"threshold": 12}).done) == {"a.jpg", "b.jpg"}
    assert QueryLog(path, {"threshold": 8}).done == {}
    assert QueryLog(path, {"threshold": 8}).done == {}


def test_results_name_is_the_basename():
    assert results_name("query/night/nexus5x/IMG_1.jpg") == "IMG_1.jpg"
