from __future__ import annotations

import numpy as np
import pycolmap
import pytest

from d2_sfm.localization import covisibility
from d2_sfm.localization.covisibility import Observations, covisibility_pairs, pose_neighbour_pairs
from d2_sfm.localization import LocalizationError
from d2_sfm.localization.model import ModelIndex, covisibility_clusters, load_model

from localization_scenes import camera, look_at


def test_pairs_rank_by_shared_points_and_skip_unrelated_images():
    # a sees points 0-9; b shares 0-5 with a, c shares 6-7, d shares nothing
    images = [0] * 10 + [1] * 6 + [2] * 2 + [3] * 3
    points = list(range(10)) + list(range(6)) + [6, 7] + [20, 21, 22]
    observations = Observations(["a", "b", "c", "d"], np.array(images), np.array(points))
    assert covisibility_pairs(observations, 5) == [("a", "b"), ("a", "c"), ("b", "a"), ("c", "a")]
    assert covisibility_pairs(observations, 1)[:1] == [("a", "b")]


def test_an_image_seeing_a_point_twice_counts_it_once():
    observations = Observations(["a", "b", "c"], np.array([0, 0, 1, 2, 2]), np.array([5, 5, 5, 5, 6]))
    pairs = covisibility_pairs(observations, 1)
    assert pairs[0] == ("a", "b")  # a-b and a-c both share one point: the earlier image wins


def posed_model(centres_and_targets) -> pycolmap.Reconstruction:
    model = pycolmap.Reconstruction()
    model.add_camera_with_trivial_rig(camera())
    for image_id, (centre, target) in enumerate(centres_and_targets, start=1):
        model.add_image_with_trivial_frame(pycolmap.Image(name=f"{image_id}.jpg", camera_id=1, image_id=image_id),
                                           look_at(centre, target))
    return model


def test_without_points_pairs_come_from_poses():
    model = posed_model([([0, 0, 0], [0, 5, 0]), ([1, 0, 0], [1, 5, 0]), ([5, 0, 0], [5, 5, 0]),
                         ([0.5, 0, 0], [0.5, -5, 0])])  # the last one looks the other way
    pairs = pose_neighbour_pairs(model, 1)
    assert ("1.jpg", "2.jpg") in pairs and ("3.jpg", "2.jpg") in pairs
    assert all("4.jpg" not in pair for pair in pairs)


def test_main_writes_a_pairs_file_and_rejects_an_empty_result(tmp_path):
    model = posed_model([([0, 0, 0], [0, 5, 0]), ([1, 0, 0], [1, 5, 0])])
    path = covisibility.main(model, tmp_path / "pairs.txt", 5)
    assert path.read_text().split("\n")[0] == "1.jpg 2.jpg"
    lonely = posed_model([([0, 0, 0], [0, 5, 0]), ([1, 0, 0], [1, -5, 0])])
    with pytest.raises(LocalizationError, match="no database pairs"):
        covisibility.main(lonely, tmp_path / "none.txt", 5)


def test_clusters_are_connected_components_of_shared_points(model_scene):
    index = ModelIndex(model_scene.reconstruction)
    ids = sorted(model_scene.reconstruction.images)
    [cluster] = covisibility_clusters(index, ids)
    assert sorted(cluster) == ids
    lonely = posed_model([([0, 0, 0], [0, 5, 0]), ([1, 0, 0], [1, 5, 0])])
    assert covisibility_clusters(ModelIndex(lonely), [1, 2]) == [[1], [2]]


def test_load_model_names_the_folder(tmp_path):
    with pytest.raises(LocalizationError, match=str(tmp_path)):
        load_model(tmp_path)
