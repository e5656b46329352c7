"""triangulate --refine keypoints on a real reconstruct output: the refined keypoints are what gets
triangulated, written beside the model; the input features file is never changed."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from d2_sfm import triangulate
from d2_sfm.colmap import pycolmap
from d2_sfm.configs import RefineConfig
from d2_sfm.h5io import open_h5, read_keypoints
from d2_sfm.triangulate import TriangulationConfig


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def triangulated(run_dir, tmp_path_factory):
    """The same inputs triangulated with the run's own poses, without and with refinement."""
    root = tmp_path_factory.mktemp("triangulate_refine")
    images, features = run_dir.parent / "scene" / "images", run_dir / "features.h5"
    before = digest(features)
    models = {}
    for mode in ("none", "keypoints", "keypoints+bundle"):
        config = TriangulationConfig(num_threads=1, refine=RefineConfig(mode=mode))
        models[mode] = triangulate.main(run_dir / "sfm", images, run_dir / "pairs.txt", features,
                                        run_dir / "matches.h5", root / mode, config)
    assert digest(features) == before  # the user's features file is read, never written
    return root, models, features


def test_refined_keypoints_are_the_ones_triangulated(triangulated):
    root, models, features = triangulated
    assert not (root / "none" / "features-refined.h5").exists()
    refined_file = root / "keypoints" / "features-refined.h5"
    moved = 0
    with open_h5(features, "features") as original, open_h5(refined_file, "refined") as refined:
        for image in models["keypoints"].images.values():
            observed = [(k, p.xy) for k, p in enumerate(image.points2D) if p.has_point3D()]
            if not observed:
                continue
            index = np.array([k for k, _ in observed])
            xy = np.array([xy for _, xy in observed])
            new, old = read_keypoints(refined, image.name), read_keypoints(original, image.name)
            np.testing.assert_allclose(xy - 0.5, new[index], atol=1e-4)  # COLMAP's +0.5 px convention
            moved += int((np.linalg.norm(new - old, axis=1) > 0.05).sum())
    assert moved > 50


def test_refinement_makes_tracks_agree_with_the_fixed_poses(triangulated):
    _, models, _ = triangulated
    plain, refined = models["none"], models["keypoints"]
    assert refined.num_points3D() > 0.8 * plain.num_points3D()
    assert refined.compute_mean_reprojection_error() < plain.compute_mean_reprojection_error()
    for image in plain.images.values():  # poses are the reference's, unchanged
        other = refined.find_image_with_name(image.name)
        assert np.allclose(other.cam_from_world().matrix(), image.cam_from_world().matrix(), atol=1e-9)


def test_bundle_moves_points_only_and_fits_them_better(triangulated):
    """keypoints+bundle: after triangulation every observation is aligned to its point's reference and
    the points (never the poses) are adjusted; the model on disk is the adjusted one."""
    root, models, _ = triangulated
    refined, adjusted = models["keypoints"], models["keypoints+bundle"]
    assert adjusted.num_points3D() > 0.7 * refined.num_points3D()
    assert adjusted.compute_mean_reprojection_error() < 0.9 * refined.compute_mean_reprojection_error()  # 0.74 -> 0.60
    for image in refined.images.values():
        other = adjusted.find_image_with_name(image.name)
        assert np.allclose(other.cam_from_world().matrix(), image.cam_from_world().matrix(), atol=1e-9)
    on_disk = pycolmap.Reconstruction(str(root / "keypoints+bundle"))
    assert on_disk.num_points3D() == adjusted.num_points3D()
    assert on_disk.compute_mean_reprojection_error() == pytest.approx(adjusted.compute_mean_reprojection_error())


def test_refine_option_on_the_command_line():
    assert triangulate.build_parser().parse_args(
        ["--reference", "r", "--images", "i", "--pairs", "p", "--features", "f", "--matches", "m", "--output", "o",
         "--refine", "keypoints"]).refine == "keypoints"
    with pytest.raises(SystemExit):
        triangulate.build_parser().parse_args(["--reference", "r", "--images", "i", "--pairs", "p", "--features",
                                               "f", "--matches", "m", "--output", "o", "--refine", "magic"])
