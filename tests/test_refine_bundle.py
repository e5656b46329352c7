"""--refine keypoints+bundle: after mapping, every observation of a 3D point is aligned to one
reference observation, photometric outliers leave, and a featuremetric bundle adjustment moves
poses and points. On the real sample-scene reconstruction of the session (6 views, 320 x 240)."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from d2_sfm import reconstruct
from d2_sfm.alignment import model_poses
from d2_sfm.colmap import pycolmap
from d2_sfm.colmap_db import CameraConfig
from d2_sfm.configs import BundleConfig, RefineConfig
from d2_sfm.errors import ConfigError
from d2_sfm.datasets.sample_scene import GROUND_TRUTH_FILE, read_ground_truth
from d2_sfm.extractor import ExtractionConfig
from d2_sfm.reconstruct import ReconstructionConfig
from d2_sfm.reconstruction.summary import ground_truth_report
from d2_sfm.refinement.bundle import adjust_reconstruction, image_loader

BUNDLE = RefineConfig(mode="keypoints+bundle")


@pytest.fixture()
def model(run_dir) -> pycolmap.Reconstruction:
    return pycolmap.Reconstruction(str(run_dir / "sfm"))


@pytest.fixture()
def loader(run_dir):
    return image_loader(run_dir.parent / "scene" / "images", BUNDLE)


def observations(model: pycolmap.Reconstruction) -> dict[tuple[int, int], np.ndarray]:
    return {(element.image_id, element.point2D_idx): model.images[element.image_id].points2D[element.point2D_idx].xy
            for point in model.points3D.values() for element in point.track.elements}


def test_displaced_keypoints_come_back_and_tracks_agree_with_fixed_poses(model, loader):
    """Observations pushed by a known 1.2 px offset return to where their patches agree; with the
    poses fixed, only points move and the tracks fit them better than before."""
    poses = {i: image.cam_from_world().matrix() for i, image in model.images.items()}
    original = observations(model)
    rng = np.random.default_rng(0)
    displaced = {}
    for key in list(original)[::4]:
        offset = rng.normal(size=2)
        displaced[key] = 1.2 * offset / np.linalg.norm(offset)
        model.images[key[0]].points2D[key[1]].xy = original[key] + displaced[key]
    model.update_point_3d_errors()
    before = model.compute_mean_reprojection_error()

    report = adjust_reconstruction(model, loader, BUNDLE, constant_poses=True)

    after = observations(model)
    back = [np.linalg.norm(after[key] - original[key]) for key in displaced if key in after]
    assert len(back) > 0.7 * len(displaced)
    assert np.median(back) < 0.4  # moved back from 1.2 px (references stay where they were put)
    assert model.compute_mean_reprojection_error() < 0.7 * before
    assert report.reprojection_error[1] == pytest.approx(model.compute_mean_reprojection_error())
    assert model.num_points3D() > 0.8 * len({p for p in model.points3D})
    for image_id, matrix in poses.items():
        np.testing.assert_array_equal(model.images[image_id].cam_from_world().matrix(), matrix)


def test_poses_get_closer_to_the_ground_truth(model, loader, run_dir):
    """The sample scene's known poses: relative rotation errors drop (5 views, 320 x 240, hed_vgg16:
    median 1.10 -> 0.71 deg when written)."""
    truth = {name: view.cam_from_world
             for name, view in read_ground_truth(run_dir.parent / "scene" / GROUND_TRUTH_FILE).items()}
    before = ground_truth_report(model, truth)[0]["relative_rotation_error_deg"]

    adjust_reconstruction(model, loader, BUNDLE)

    after = ground_truth_report(model, truth)[0]["relative_rotation_error_deg"]
    assert after["num_pairs"] == before["num_pairs"] >= 6
    assert after["median"] < 0.85 * before["median"]
    assert after["max"] < before["max"]


def test_the_adjustment_does_not_depend_on_the_number_of_threads(model, loader):
    """Observations are realigned on parallel worker threads (one image each): the same model with
    1 or 3 workers up to the solver's rounding, and torch's thread count is restored afterwards."""
    threads = torch.get_num_threads()
    adjusted = {}
    try:
        for workers in (1, 3):
            torch.set_num_threads(workers)
            copy = pycolmap.Reconstruction(model)
            report = adjust_reconstruction(copy, loader, BUNDLE)
            assert torch.get_num_threads() == workers
            adjusted[workers] = (report.realigned, observations(copy), model_poses(copy))
    finally:
        torch.set_num_threads(threads)
    (realigned1, observed1, poses1), (realigned3, observed3, poses3) = adjusted[1], adjusted[3]
    assert realigned1 == realigned3 > 0 and observed1.keys() == observed3.keys()
    assert all(np.array_equal(observed1[key], observed3[key]) for key in observed1)  # the alignments: bitwise
    for name, pose in poses1.items():
        np.testing.assert_allclose(pose.matrix(), poses3[name].matrix(), rtol=0, atol=1e-9)


def test_free_cameras_get_a_new_focal_length_and_distortion_and_keep_their_principal_point(model, loader):
    """BundleConfig.refine_intrinsics: the named cameras' focal length and distortion move with the
    poses (recorded before / after in the solver report), the principal point stays; others stay."""
    camera_id = next(iter(model.cameras))
    fixed = pycolmap.Reconstruction(model)
    adjust_reconstruction(fixed, loader, BUNDLE)
    free = pycolmap.Reconstruction(model)
    report = adjust_reconstruction(free, loader, BUNDLE, free_cameras=[camera_id])
    before, after = (np.array(model.cameras[camera_id].params), np.array(free.cameras[camera_id].params))
    np.testing.assert_array_equal(np.array(fixed.cameras[camera_id].params), before)
    change = report.solver["intrinsics"][str(camera_id)]
    np.testing.assert_array_equal(change["before"], before)
    np.testing.assert_array_equal(change["after"], after)
    principal = list(model.cameras[camera_id].principal_point_idxs())
    np.testing.assert_array_equal(after[principal], before[principal])
    assert np.abs(after - before).max() > 0  # 320 px views: the focal length moves by a fraction of a pixel or more
    assert report.reprojection_error[1] < report.reprojection_error[0]


def test_an_observation_on_the_wrong_spot_leaves_or_stays_bounded(model, loader):
    """An observation moved 12 px off (a wrong correspondence) is either dropped as a photometric
    outlier or moves at most the alignment bound from where it was put."""
    point_id, point = max(model.points3D.items(), key=lambda item: item[1].track.length())
    element = point.track.elements[-1]
    key = (element.image_id, element.point2D_idx)
    wrong = model.images[key[0]].points2D[key[1]].xy + np.array([12.0, -7.0])
    model.images[key[0]].points2D[key[1]].xy = wrong

    report = adjust_reconstruction(model, loader, BUNDLE)

    still = model.exists_point3D(point_id) and any(
        (e.image_id, e.point2D_idx) == key for e in model.points3D[point_id].track.elements)
    if still:
        assert np.abs(model.images[key[0]].points2D[key[1]].xy - wrong).max() <= BUNDLE.patch.bound + 1e-3
    else:
        assert report.photometric_outliers + report.reprojection_outliers >= 1


def test_reconstruct_with_bundle_resumes_from_mapping_and_reports_it(run_dir, tmp_path):
    images = run_dir.parent / "scene" / "images"
    run_dir = Path(shutil.copytree(run_dir, tmp_path / "out"))  # the other tests read the module's model
    before = json.loads((run_dir / "steps.json").read_text())
    config = ReconstructionConfig(weights="hed_vgg16", extraction=ExtractionConfig(max_edge=320), refine=BUNDLE)
    summary = reconstruct.main(images, run_dir, config)
    steps = json.loads((run_dir / "steps.json").read_text())
    assert all(steps[step] == before[step] for step in ("extract", "pairs", "match"))
    bundle = summary.data["bundle"]
    assert bundle["realigned"] > 100 and "bundle" in summary.data["timings"]
    assert bundle["reprojection_error"][1] < bundle["reprojection_error"][0]
    model = pycolmap.Reconstruction(str(run_dir / "sfm"))
    assert model.compute_mean_reprojection_error() == pytest.approx(summary.data["mean_reprojection_error"])
    assert summary.data["settings"]["refine"]["bundle"]["max_reprojection_error"] == 4.0
    # weak registration is judged on what the mapper registered with, before the photometric test
    mapped = steps["map"]["registration_points"]
    assert set(mapped) == {image.name for image in model.images.values()}
    assert all(mapped[image.name] >= image.num_points3D for image in model.images.values())
    assert sum(mapped.values()) > sum(image.num_points3D for image in model.images.values())


def test_models_over_the_pose_limit_keep_the_mapped_poses(run_dir, tmp_path):
    """Past BundleConfig.max_pose_images the dense pose system is not built: the bundle moves only
    the points, so the poses are exactly those of the same mapping without a bundle."""
    images = run_dir.parent / "scene" / "images"
    run_dir = Path(shutil.copytree(run_dir, tmp_path / "out"))
    base = ReconstructionConfig(weights="hed_vgg16", extraction=ExtractionConfig(max_edge=320))
    limited = RefineConfig(mode="keypoints+bundle", bundle=BundleConfig(max_pose_images=2))
    adjusted = reconstruct.main(images, run_dir, replace(base, refine=limited))
    assert adjusted.data["bundle"]["poses_adjusted"] is False and adjusted.data["num_registered"] > 2
    assert adjusted.data["bundle"]["reprojection_error"][1] < adjusted.data["bundle"]["reprojection_error"][0]
    mapped = reconstruct.main(images, run_dir, replace(base, refine=RefineConfig(mode="keypoints")))
    assert "bundle" not in mapped.data
    poses = {name: pose.matrix() for name, pose in model_poses(adjusted.reconstruction).items()}
    assert poses.keys() == model_poses(mapped.reconstruction).keys()
    assert all(np.array_equal(poses[name], pose.matrix()) for name, pose in model_poses(mapped.reconstruction).items())


def test_bundle_intrinsics_move_self_calibrated_cameras_only(run_dir, tmp_path):
    """reconstruct with BundleConfig.refine_intrinsics: the self-calibrated camera's change is in the
    summary and the written model; a camera given by --camera-params stays as given."""
    images = run_dir.parent / "scene" / "images"
    run_dir = Path(shutil.copytree(run_dir, tmp_path / "out"))
    refine = RefineConfig(mode="keypoints+bundle", bundle=BundleConfig(refine_intrinsics=True))
    base = ReconstructionConfig(weights="hed_vgg16", extraction=ExtractionConfig(max_edge=320), refine=refine)
    free = reconstruct.main(images, run_dir, base)
    change = free.data["bundle"]["solver"]["intrinsics"]
    assert change and all(values["before"] != values["after"] for values in change.values())
    assert [camera["params"] for camera in free.data["cameras"]] == [values["after"] for values in change.values()]
    view = next(iter(read_ground_truth(images.parent / GROUND_TRUTH_FILE).values()))
    known = reconstruct.main(images, run_dir, replace(base, camera=CameraConfig(params=tuple(view.camera.params))))
    assert known.data["bundle"]["solver"]["intrinsics"] == {}
    assert all(camera["params"] == list(view.camera.params) for camera in known.data["cameras"])


def test_bundle_settings_are_checked_and_part_of_the_resume_key():
    with pytest.raises(ConfigError, match="bundle_bound"):
        RefineConfig(mode="keypoints+bundle", bundle=BundleConfig(bound=0.0))
    with pytest.raises(ConfigError, match="bundle_max_pose_images"):
        RefineConfig(mode="keypoints+bundle", bundle=BundleConfig(max_pose_images=1))
    with pytest.raises(ConfigError, match="bundle_loss_scale"):
        RefineConfig(mode="keypoints+bundle", bundle=BundleConfig(loss_scale=-1.0))
    assert "bundle" not in RefineConfig(mode="keypoints").settings()  # older runs' keys stay valid
    changed = RefineConfig(mode="keypoints+bundle", bundle=BundleConfig(max_reprojection_error=2.0))
    assert changed.settings() != BUNDLE.settings()
    assert "refine_intrinsics" not in BUNDLE.settings()["bundle"]  # off: the keys of earlier runs stay valid
    assert RefineConfig(mode="keypoints+bundle", bundle=BundleConfig(refine_intrinsics=True)).settings()["bundle"][
        "refine_intrinsics"]
    features = RefineConfig(mode="keypoints+bundle", method="features")
    assert "patch" in features.settings()  # the bundle aligns patches whatever the method


def test_observations_the_camera_cannot_undistort_leave_and_are_counted(model, loader):
    """A strong barrel distortion has no inverse near the image border (pycolmap gives NaN there):
    those observations leave the model instead of failing the whole adjustment."""
    camera = next(iter(model.cameras.values()))
    assert camera.model.name == "SIMPLE_RADIAL"
    camera.params = [*camera.params[:3], -0.5]
    report = adjust_reconstruction(model, loader, BUNDLE, constant_poses=True)
    assert report.undistortion_failures > 0
    assert all(np.isfinite(point.xyz).all() for point in model.points3D.values())
