"""Camera poses against ground truth: readers for reference poses, Sim3 alignment, pose errors.

All poses are `cam_from_world` in COLMAP axes (x right, y down, z forward).
- `read_bundler`: Bundler `bundle.out` v0.3 (camera looks down -z, y up: converted by
  diag(1, -1, -1)); cameras with focal 0 were not reconstructed and are skipped.
- `read_middlebury_par`: Middlebury `*_par.txt` (`name k11..k33 r11..r33 t1 t2 t3`, P = K [R | t]).
- `align_and_compare`: similarity `gt_from_model` from camera centres (pycolmap.estimate_sim3d),
  then per-image rotation error (deg) and camera-centre error, also relative to the scene size
  (the largest distance between two ground-truth camera centres).
- `relative_rotation_errors`: needs no alignment: for every pair of images, the angle between the
  estimated and reference `cam_j_from_cam_i` rotations.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .colmap import pycolmap
from .errors import D2SfmError

BUNDLER_TO_COLMAP = np.diag([1.0, -1.0, -1.0])


class GroundTruthError(D2SfmError, ValueError):
    """A ground-truth file that cannot be read; the message names the file and line."""


def rigid(rotation: np.ndarray, translation: np.ndarray) -> pycolmap.Rigid3d:
    """Rigid3d from a 3x3 rotation (re-orthonormalised: text files round their digits)."""
    u, _, vt = np.linalg.svd(np.asarray(rotation, np.float64))
    rotation = u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt
    return pycolmap.Rigid3d(pycolmap.Rotation3d(rotation), np.asarray(translation, np.float64))


def read_bundler(path: Path, names: list[str]) -> dict[str, pycolmap.Rigid3d]:
    """cam_from_world of the reconstructed cameras of a bundle.out; `names` in the file's camera order."""
    try:
        lines = [line for line in Path(path).read_text().splitlines() if not line.startswith("#")]
        num_cameras = int(lines[0].split()[0])
        poses = {}
        for index in range(num_cameras):
            block = np.array([[float(v) for v in lines[1 + 5 * index + row].split()] for row in range(5)])
            if block[0, 0] == 0:
                continue
            poses[names[index]] = rigid(BUNDLER_TO_COLMAP @ block[1:4], BUNDLER_TO_COLMAP @ block[4])
    except (OSError, ValueError, IndexError) as error:
        raise GroundTruthError(f"cannot read Bundler file {path}: {error}") from error
    if num_cameras != len(names):
        raise GroundTruthError(f"{path} has {num_cameras} cameras but {len(names)} image names were given")
    return poses


def read_middlebury_par(path: Path) -> tuple[dict[str, pycolmap.Rigid3d], dict[str, np.ndarray]]:
    """cam_from_world and K (3x3) per image name of a Middlebury `*_par.txt` file."""
    poses, intrinsics = {}, {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise GroundTruthError(f"cannot read {path}: {error.strerror or error}") from error
    for number, line in enumerate(lines[1:], 2):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 22:
            raise GroundTruthError(f"{path}:{number}: expected 'name k11..k33 r11..r33 t1 t2 t3'")
        values = np.array([float(v) for v in fields[1:]])
        intrinsics[fields[0]] = values[:9].reshape(3, 3)
        poses[fields[0]] = rigid(values[9:18].reshape(3, 3), values[18:21])
    return poses, intrinsics


def model_poses(reconstruction: pycolmap.Reconstruction) -> dict[str, pycolmap.Rigid3d]:
    """cam_from_world of every registered image, by name."""
    return {image.name: image.cam_from_world() for image in reconstruction.images.values() if image.has_pose}


def rotation_error_deg(a: pycolmap.Rigid3d, b: pycolmap.Rigid3d) -> float:
    return float(np.rad2deg(a.rotation.angle_to(b.rotation)))


def relative_rotation_errors(estimated: dict[str, pycolmap.Rigid3d], reference: dict[str, pycolmap.Rigid3d]
                             ) -> np.ndarray:
    """Angle (deg) between estimated and reference cam_j_from_cam_i for every pair in both."""
    names = sorted(set(estimated) & set(reference))
    errors = []
    for name_i, name_j in itertools.combinations(names, 2):
        est = estimated[name_j] * estimated[name_i].inverse()
        ref = reference[name_j] * reference[name_i].inverse()
        errors.append(rotation_error_deg(est, ref))
    return np.array(errors)


def centre(cam_from_world: pycolmap.Rigid3d) -> np.ndarray:
    return cam_from_world.inverse().translation


@dataclass
class PoseErrors:
    """Pose errors of the registered images after a similarity alignment to the ground truth."""
    rotation_deg: dict[str, float] = field(default_factory=dict)
    centre: dict[str, float] = field(default_factory=dict)  # in ground-truth units
    scene_size: float = 0.0  # largest distance between two ground-truth camera centres
    scale: float = float("nan")  # of gt_from_model

    @property
    def max_rotation_deg(self) -> float:
        return max(self.rotation_deg.values(), default=float("nan"))

    @property
    def max_centre_fraction(self) -> float:
        return max(self.centre.values(), default=float("nan")) / self.scene_size if self.scene_size else float("nan")

    def as_dict(self) -> dict[str, object]:
        rot, cen = list(self.rotation_deg.values()), list(self.centre.values())
        return {
            "num_aligned": len(rot), "scene_size": self.scene_size, "scale": self.scale,
            "rotation_error_deg": {"median": float(np.median(rot)) if rot else None, "max": max(rot, default=None)},
            "centre_error": {"median": float(np.median(cen)) if cen else None, "max": max(cen, default=None)},
            "max_centre_error_fraction_of_scene": self.max_centre_fraction,
            "per_image": {n: {"rotation_deg": self.rotation_deg[n], "centre": self.centre[n]}
                          for n in self.rotation_deg},
        }


def centre_alignment(estimated: dict[str, pycolmap.Rigid3d], reference: dict[str, pycolmap.Rigid3d],
                     names: list[str]) -> pycolmap.Sim3d | None:
    """reference_from_estimated fitted to the camera centres of `names` (least squares; None: degenerate)."""
    return pycolmap.estimate_sim3d(np.array([centre(estimated[n]) for n in names]).reshape(-1, 3),
                                   np.array([centre(reference[n]) for n in names]).reshape(-1, 3))


def align_and_compare(estimated: dict[str, pycolmap.Rigid3d], reference: dict[str, pycolmap.Rigid3d]
                      ) -> PoseErrors:
    """Fit gt_from_model to the camera centres (least squares, >= 3 images), then compare poses."""
    names = sorted(set(estimated) & set(reference))
    gt_centres = np.array([centre(reference[n]) for n in names]).reshape(-1, 3)
    errors = PoseErrors()
    if len(gt_centres) >= 2:
        errors.scene_size = float(max(np.linalg.norm(a - b) for a, b in itertools.combinations(gt_centres, 2)))
    if len(names) < 3:
        return errors
    gt_from_model = centre_alignment(estimated, reference, names)
    if gt_from_model is None:
        return errors
    errors.scale = float(gt_from_model.scale)
    world_from_gt_rotation = gt_from_model.rotation.inverse()
    for name, gt_centre in zip(names, gt_centres):
        aligned_centre = gt_from_model * centre(estimated[name])
        # cam_from_gt = cam_from_model * model_from_gt (rotation part only; scale does not rotate)
        cam_from_gt = estimated[name].rotation * world_from_gt_rotation
        errors.rotation_deg[name] = float(np.rad2deg(cam_from_gt.angle_to(reference[name].rotation)))
        errors.centre[name] = float(np.linalg.norm(aligned_centre - gt_centre))
    return errors


def read_ground_truth_file(path: Path, image_names: list[str] | None = None) -> dict[str, pycolmap.Rigid3d]:
    """cam_from_world by name from a Middlebury `*_par.txt`, a Bundler `.out` (cameras in the order
    of `image_names`, i.e. the sorted image folder) or d2_sfm's `ground_truth.txt`
    (`name qw qx qy qz tx ty tz [fx fy cx cy]`)."""
    path = Path(path)
    if path.name.endswith("_par.txt"):
        return read_middlebury_par(path)[0]
    if path.suffix == ".out":
        if image_names is None:
            raise GroundTruthError(f"{path}: a Bundler file needs the image names in camera order")
        return read_bundler(path, image_names)
    from .datasets.sample_scene import read_ground_truth

    return {name: view.cam_from_world for name, view in read_ground_truth(path).items()}
