"""Fixed-pose triangulation (the step localization maps are built with) on the synthetic scene."""
from __future__ import annotations

import numpy as np
import pycolmap
import pytest
from synthetic_colmap_scene import FOCAL, HEIGHT, WIDTH, synthetic_inputs

from d2_sfm import triangulate
from d2_sfm.triangulate import TriangulationConfig, TriangulationError


def reference_model(scene, with_noise_view: bool = True) -> pycolmap.Reconstruction:
    """Ground-truth cameras and poses, image ids unrelated to any database (as a reference model)."""
    model = pycolmap.Reconstruction()
    camera = pycolmap.Camera(model="PINHOLE", width=WIDTH, height=HEIGHT, params=[FOCAL, FOCAL, WIDTH / 2, HEIGHT / 2],
                             camera_id=7)
    model.add_camera_with_trivial_rig(camera)
    poses = dict(scene.cam_from_world)
    if with_noise_view:
        poses["noise.jpg"] = pycolmap.Rigid3d(pycolmap.Rotation3d(), np.array([0.0, 0.0, 6.0]))
    for k, (name, pose) in enumerate(sorted(poses.items())):
        model.add_image_with_trivial_frame(pycolmap.Image(name=name, camera_id=7, image_id=100 + k), pose)
    return model


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return synthetic_inputs(tmp_path_factory.mktemp("tri"), num_views=4)


def test_triangulation_with_known_poses(scene, tmp_path):
    model = triangulate.main(reference_model(scene), scene.image_dir, scene.pairs, scene.features, scene.matches,
                             tmp_path / "out", TriangulationConfig(num_threads=1))
    assert model.num_points3D() > 500
    assert model.compute_mean_reprojection_error() < 1.0
    for name, pose in scene.cam_from_world.items():  # poses and intrinsics untouched
        image = model.find_image_with_name(name)
        assert np.allclose(image.cam_from_world().matrix(), pose.matrix(), atol=1e-9)
    assert list(model.cameras[7].params) == [FOCAL, FOCAL, WIDTH / 2, HEIGHT / 2]
    assert model.find_image_with_name("noise.jpg").num_points3D == 0  # its random matches were rejected
    reread = pycolmap.Reconstruction(str(tmp_path / "out"))
    assert reread.num_points3D() == model.num_points3D()
    assert (tmp_path / "out" / "database.db").is_file()


def test_verification_modes_and_missing_features(scene, tmp_path):
    reference = reference_model(scene)
    reference.add_image_with_trivial_frame(pycolmap.Image(name="no_features.jpg", camera_id=7, image_id=999),
                                           pycolmap.Rigid3d())
    unverified = triangulate.main(reference, scene.image_dir, scene.pairs, scene.features, scene.matches,
                                  tmp_path / "none", TriangulationConfig(verification="none", num_threads=1))
    estimated = triangulate.main(reference, scene.image_dir, scene.pairs, scene.features, scene.matches,
                                 tmp_path / "estimate", TriangulationConfig(verification="estimate", num_threads=1))
    assert unverified.num_points3D() > 500 and estimated.num_points3D() > 500
    assert estimated.compute_mean_reprojection_error() < 1.0


def test_bad_reference_is_reported(scene, tmp_path):
    with pytest.raises(TriangulationError, match="not a COLMAP model"):
        triangulate.main(tmp_path, scene.image_dir, scene.pairs, scene.features, scene.matches, tmp_path / "o")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("other0.jpg other1.jpg\n")
    with pytest.raises(TriangulationError, match="no pair"):
        triangulate.main(reference_model(scene), scene.image_dir, pairs, scene.features, scene.matches, tmp_path / "o")
    with pytest.raises(TriangulationError):
        TriangulationConfig(verification="magic")
