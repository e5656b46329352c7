"""alignment on synthetic poses related by a known similarity."""
import numpy as np
import pytest

from d2_sfm.alignment import BUNDLER_TO_COLMAP, GroundTruthError, align_and_compare, read_bundler, \
    relative_rotation_errors, rigid
from d2_sfm.colmap import pycolmap


def rotation(axis, degrees: float) -> np.ndarray:
    return pycolmap.Rotation3d(np.asarray(axis, float) * np.deg2rad(degrees)).matrix()


def ground_truth() -> dict[str, pycolmap.Rigid3d]:
    """Four cameras on a rough circle, looking around (cam_from_world)."""
    poses = {}
    for index, yaw in enumerate((0, 40, 95, 160)):
        world_from_cam_rotation = rotation([0, 1, 0], yaw) @ rotation([1, 0, 0], 5 * index)
        centre = np.array([3 * np.sin(np.deg2rad(yaw)), 0.2 * index, -3 * np.cos(np.deg2rad(yaw))])
        poses[f"im{index}.jpg"] = rigid(world_from_cam_rotation.T, -world_from_cam_rotation.T @ centre)
    return poses


def in_model_frame(poses: dict[str, pycolmap.Rigid3d], gt_from_model: pycolmap.Sim3d) -> dict[str, pycolmap.Rigid3d]:
    """The same cameras expressed in a model frame: cam_from_model = cam_from_gt * gt_from_model."""
    model = {}
    for name, cam_from_gt in poses.items():
        rotation_matrix = cam_from_gt.rotation.matrix() @ gt_from_model.rotation.matrix()
        centre_gt = cam_from_gt.inverse().translation
        centre_model = gt_from_model.inverse() * centre_gt
        model[name] = rigid(rotation_matrix, -rotation_matrix @ centre_model)
    return model


GT_FROM_MODEL = pycolmap.Sim3d(2.5, pycolmap.Rotation3d(np.array([0.3, -0.5, 0.2])), np.array([1.0, -2.0, 0.5]))


def test_rigid_reorthonormalises_a_rounded_rotation():
    rounded = np.round(rotation([0, 0, 1], 33), 3)
    pose = rigid(rounded, [1, 2, 3])
    matrix = pose.rotation.matrix()
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(matrix, rounded, atol=2e-3)
    np.testing.assert_array_equal(pose.translation, [1, 2, 3])


def test_align_and_compare_recovers_the_similarity():
    reference = ground_truth()
    errors = align_and_compare(in_model_frame(reference, GT_FROM_MODEL), reference)
    assert errors.scale == pytest.approx(2.5, rel=1e-6)
    assert errors.max_rotation_deg < 1e-4
    assert max(errors.centre.values()) < 1e-6
    centres = np.array([p.inverse().translation for p in reference.values()])
    assert errors.scene_size == pytest.approx(max(np.linalg.norm(a - b) for a in centres for b in centres))
    assert errors.as_dict()["num_aligned"] == 4


def test_align_and_compare_measures_a_perturbed_camera():
    reference = ground_truth()
    estimated = in_model_frame(reference, GT_FROM_MODEL)
    centre = estimated["im2.jpg"].inverse().translation
    turned = rotation([0, 0, 1], 3.0) @ estimated["im2.jpg"].rotation.matrix()  # same centre, turned 3 deg
    estimated["im2.jpg"] = rigid(turned, -turned @ centre)
    errors = align_and_compare(estimated, reference)
    assert errors.rotation_deg["im2.jpg"] == pytest.approx(3.0, abs=1e-4)
    assert max(v for k, v in errors.rotation_deg.items() if k != "im2.jpg") < 1e-4
    assert max(errors.centre.values()) < 1e-6


def test_too_few_common_images_give_no_alignment():
    reference = ground_truth()
    two = {k: reference[k] for k in ("im0.jpg", "im1.jpg")}
    errors = align_and_compare(two, reference)
    assert errors.rotation_deg == {} and np.isnan(errors.scale) and errors.scene_size > 0


def test_relative_rotation_errors_need_no_alignment():
    reference = ground_truth()
    estimated = in_model_frame(reference, GT_FROM_MODEL)
    errors = relative_rotation_errors(estimated, reference)
    assert errors.shape == (6,) and errors.max() < 1e-4
    del estimated["im3.jpg"]
    assert relative_rotation_errors(estimated, reference).shape == (3,)


def test_read_bundler_converts_axes_and_skips_unreconstructed_cameras(tmp_path):
    r = rotation([0, 1, 0], 20)
    t = np.array([0.5, -1.0, 2.0])
    lines = ["# Bundle file v0.3", "2 0", "500 0 0", *(" ".join(map(str, row)) for row in r), " ".join(map(str, t)),
             "0 0 0", "1 0 0", "0 1 0", "0 0 1", "0 0 0"]
    path = tmp_path / "bundle.out"
    path.write_text("\n".join(lines) + "\n")
    poses = read_bundler(path, ["a.jpg", "b.jpg"])
    assert list(poses) == ["a.jpg"]
    np.testing.assert_allclose(poses["a.jpg"].rotation.matrix(), BUNDLER_TO_COLMAP @ r, atol=1e-12)
    np.testing.assert_allclose(poses["a.jpg"].translation, BUNDLER_TO_COLMAP @ t)
    with pytest.raises(GroundTruthError, match="bundle.out"):
        read_bundler(path, ["a.jpg"])
