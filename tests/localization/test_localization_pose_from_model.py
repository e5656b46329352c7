from __future__ import annotations

import h5py
import numpy as np
import pytest

from d2_sfm.localization import LocalizationError
from d2_sfm.localization.estimation import PoseEstimationConfig
from d2_sfm.localization.pose_from_model import ModelLocalizationConfig, ModelLocalizer, main

from localization_scenes import camera


def errors(result, truth):
    rotation = np.rad2deg(result.cam_from_world.rotation.angle_to(truth.rotation))
    position = np.linalg.norm(result.cam_from_world.inverse().translation - truth.inverse().translation)
    return rotation, position


@pytest.mark.parametrize("clustering", [False, True])
def test_exact_data_gives_the_exact_pose(model_scene, clustering):
    """+0.5 is applied to HDF5 keypoints exactly: a half-pixel slip would cost ~0.05 degrees."""
    config = ModelLocalizationConfig(PoseEstimationConfig(ransac_max_error=1.0), clustering)
    [result] = main(model_scene.reconstruction, {model_scene.query: camera()},
                    {model_scene.query: model_scene.db_names}, model_scene.features, model_scene.matches, config)
    rotation, position = errors(result, model_scene.query_pose)
    assert rotation < 1e-5 and position < 1e-5
    assert result.num_inliers == result.num_correspondences > 100
    assert result.db_used == model_scene.db_names and result.failure is None


def test_correspondences_are_unique_query_point_pairs(model_scene):
    with h5py.File(model_scene.features) as features, h5py.File(model_scene.matches) as matches:
        localizer = ModelLocalizer(model_scene.reconstruction, features, matches, ModelLocalizationConfig())
        once, _ = localizer.correspondences(model_scene.query, model_scene.db_names[:1])
        rows, used = localizer.correspondences(model_scene.query, model_scene.db_names)
        # each row keeps the db observation it came from: that db keypoint observes the row's 3D point
        observed = [localizer.db_point3D_ids(used[db])[db_kp] for _, _, db, db_kp in rows]
    # both db images observe the same points: the second one adds no new (keypoint, point) pair
    assert len(rows) == len(once) == len(np.unique(rows[:, :2], axis=0))
    assert observed == rows[:, 1].tolist()


def test_query_without_retrieval_or_matches_fails_with_a_reason(model_scene):
    [result] = main(model_scene.reconstruction, {model_scene.query: camera()}, {}, model_scene.features,
                    model_scene.matches)
    assert not result.success and result.failure == "no retrieved database image"


def test_model_and_features_must_agree(model_scene):
    image = model_scene.reconstruction.find_image_with_name("db/a.jpg")
    with h5py.File(model_scene.features, "a") as f:
        del f["db/a.jpg"]["keypoints"]
        f["db/a.jpg"].create_dataset("keypoints", data=np.zeros((3, 2), np.float32))
    with pytest.raises(LocalizationError, match="db/a.jpg has .* 2D points"):
        main(model_scene.reconstruction, {model_scene.query: camera()}, {model_scene.query: ["db/a.jpg"]},
             model_scene.features, model_scene.matches)
    assert image is not None
