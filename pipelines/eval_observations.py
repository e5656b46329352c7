"""How well the true cameras explain a model's observations, against the model's own fit.

  python pipelines/eval_observations.py --model OUT/sfm --ground-truth datasets/sample_scene/ground_truth.txt

The model is aligned to the ground truth (a Sim3 on the camera centres), its poses and intrinsics are
replaced by the true ones (d2_sfm's ground_truth.txt: PINHOLE, no distortion), and its 3D points are
re-triangulated by a bundle adjustment that moves the points only (pycolmap, cameras held).
Printed: the mean residual with the true cameras beside the model's own mean reprojection error (when
the two are close, the observations do not determine the cameras better than that: e.g. a focal length
that poses can absorb), and the residual's radial component (away from the principal point) by
distance from it, with the slope of a line fitted to it, per mille. Re-triangulated points absorb most
of a radial bias of the keypoints (a planted 1 % shows as about 2 per mille on four views of an arc),
so a flat trend does not prove there is none.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from d2_sfm.alignment import centre_alignment, model_poses  # noqa: E402
from d2_sfm.cli import run_cli  # noqa: E402
from d2_sfm.colmap import pycolmap  # noqa: E402
from d2_sfm.datasets.sample_scene import read_ground_truth  # noqa: E402
from d2_sfm.errors import D2SfmError  # noqa: E402

logger = logging.getLogger("d2_sfm.eval_observations")
RADIUS_BINS = (0, 100, 200, 300, 400, 10_000)  # px from the principal point


def with_true_cameras(model: pycolmap.Reconstruction, ground_truth: Path) -> pycolmap.Reconstruction:
    """A copy of `model` in the ground truth's frame, with its poses and cameras, points re-triangulated."""
    views = read_ground_truth(ground_truth)
    registered = [image for image in model.images.values() if image.has_pose]
    missing = [image.name for image in registered if image.name not in views or views[image.name].camera is None]
    if missing or len(registered) < 3:
        raise D2SfmError(f"{ground_truth}: needs a pose and intrinsics for each of at least 3 registered images; "
                         f"missing: {', '.join(missing) or 'none'} ({len(registered)} registered)")
    aligned = pycolmap.Reconstruction(model)
    gt_from_model = centre_alignment(model_poses(model), {name: view.cam_from_world for name, view in views.items()},
                                     [image.name for image in registered])
    if gt_from_model is None:
        raise D2SfmError("the model's camera centres cannot be aligned to the ground truth's")
    aligned.transform(gt_from_model)
    config = pycolmap.BundleAdjustmentConfig()
    for image in registered:
        aligned.frames[image.frame_id].rig_from_world = views[image.name].cam_from_world
        true = views[image.name].camera
        aligned.cameras[image.camera_id] = pycolmap.Camera(model="PINHOLE", width=true.width, height=true.height,
                                                           params=true.params, camera_id=image.camera_id)
        config.add_image(image.image_id)
        config.set_constant_rig_from_world_pose(image.frame_id)
        config.set_constant_cam_intrinsics(image.camera_id)
    options = pycolmap.BundleAdjustmentOptions()
    options.print_summary = False
    pycolmap.create_default_bundle_adjuster(options, config, aligned).solve()
    return aligned


def residuals(model: pycolmap.Reconstruction) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observations (N, 2), their residuals observed - projected (N, 2) and their cameras' principal
    points (N, 2), in pixels."""
    observed, projected, principal = [], [], []
    for point in model.points3D.values():
        for element in point.track.elements:
            image = model.images[element.image_id]
            camera = model.cameras[image.camera_id]
            observed.append(image.points2D[element.point2D_idx].xy)
            projected.append(camera.img_from_cam(image.cam_from_world() * point.xyz))
            principal.append((camera.principal_point_x, camera.principal_point_y))
    observed = np.array(observed).reshape(-1, 2)
    return observed, observed - np.array(projected).reshape(-1, 2), np.array(principal).reshape(-1, 2)


def main(model_dir: Path, ground_truth: Path) -> list[str]:
    original = pycolmap.Reconstruction(str(model_dir))
    model = with_true_cameras(original, ground_truth)
    observed, residual, principal = residuals(model)
    offset = observed - principal
    radius = np.linalg.norm(offset, axis=1)
    radial = (residual * offset).sum(1) / np.maximum(radius, 1e-9)
    lines = [f"{model_dir}: {len(residual)} observations, mean residual {np.linalg.norm(residual, axis=1).mean():.3f} "
             f"px with the true cameras ({original.compute_mean_reprojection_error():.3f} px with the model's); "
             f"radial residual against radius: slope {1e3 * np.polyfit(radius, radial, 1)[0]:+.3f} per mille",
             "| radius (px) | observations | mean radial residual (px) | mean residual (px) |", "|---|---|---|---|"]
    for low, high in zip(RADIUS_BINS[:-1], RADIUS_BINS[1:]):
        chosen = (radius >= low) & (radius < high)
        if chosen.any():
            lines.append(f"| {low}-{high} | {chosen.sum()} | {radial[chosen].mean():+.4f} | "
                         f"{np.linalg.norm(residual[chosen], axis=1).mean():.3f} |")
    return lines


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a COLMAP model folder (e.g. OUT/sfm)")
    parser.add_argument("--ground-truth", type=Path, required=True,
                        help="d2_sfm ground_truth.txt with intrinsics (the sample scene's, or a rendering's)")
    args = parser.parse_args(argv)
    print("\n".join(main(args.model, args.ground_truth)))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(cli))
