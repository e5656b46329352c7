"""Featuremetric bundle adjustment of a reconstruction (Pixel-Perfect SfM's second stage, with patches).

After mapping, COLMAP's tracks join observations that keypoint adjustment aligned to different
roots, or not at all. Here every observation of each 3D point is aligned (affine Lucas-Kanade,
d2_sfm.refinement.patches) to one reference observation of that point, the one that reprojects
best; an observation whose patch does not correlate leaves the model (photometric verification).
The patch cost of an observation depends on the poses and the point only through its projection, so
its Gauss-Newton model is a quadratic in the projection, centred on the aligned position, with the
alignment's information matrix J^T J: a bundle adjustment with one anisotropic 2x2 weight per
observation (an edge constrains its keypoint only across itself), solved in torch
(bundle_solver). Intrinsics stay as mapping left them unless `free_cameras` names cameras whose
focal length and distortion move too (BundleConfig.refine_intrinsics); observations then farther
than COLMAP's 4 px from their projection leave the model.

Pixel conventions: COLMAP's points2D are keypoints + 0.5 (pixel centre at .5); alignment runs in
working pixels of the image resized like extraction (photometric.to_working).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..colmap import pycolmap
from ..configs import PatchConfig, RefineConfig
from ..errors import D2SfmError
from ..images import read_image
from ..paths import resolve_inside
from .bundle_solver import BundleSolverConfig, TargetIntrinsics, solve_weighted_bundle
from .optimize import map_single_threaded
from .patches import Alignment, align_detailed, prepare_image, templates, translation_information
from .photometric import linear_parts, split_by, to_original, to_working, track_members, working_image

logger = logging.getLogger(__name__)


class BundleError(D2SfmError, ValueError):
    """A model the bundle adjustment cannot handle (multi-camera rigs)."""


ImageLoader = Callable[[str], tuple[torch.Tensor, np.ndarray]]  # name -> prepared working image, working/original


@dataclass
class Observations:
    """Every observation of the model's 3D points, in one order."""
    image_ids: np.ndarray  # (N,) int64
    point2D_idx: np.ndarray  # (N,) int64
    point_ids: np.ndarray  # (N,) int64
    xy: np.ndarray  # (N, 2) float64 COLMAP pixels


@dataclass
class BundleReport:
    observations: int = 0  # before the adjustment
    realigned: int = 0  # observations aligned to their point's reference
    photometric_outliers: int = 0  # observations that left: their patch did not correlate
    reprojection_outliers: int = 0  # observations that left: farther than max_reprojection_error after
    undistortion_failures: int = 0  # observations that left: their camera model gave no normalised position
    median_shift_px: float = 0.0  # of the realigned observations
    reprojection_error: tuple[float, float] = (0.0, 0.0)  # mean before, after
    solver: dict[str, object] = field(default_factory=dict)  # costs, iterations, converged
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds of its phases

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def image_loader(image_dir: Path, config: RefineConfig, device: torch.device | str = "cpu") -> ImageLoader:
    """name -> its prepared working image (resized like extraction) and working / original scale."""
    def load(name: str) -> tuple[torch.Tensor, np.ndarray]:
        small, scale = working_image(read_image(resolve_inside(image_dir, name)), config.max_edge,
                                     config.max_sum_edges)
        return prepare_image(small, config.patch.blur, device, config.patch.colour), scale
    return load


def gather_observations(reconstruction: pycolmap.Reconstruction) -> Observations:
    rows = [(element.image_id, element.point2D_idx, point_id)
            for point_id, point in reconstruction.points3D.items() for element in point.track.elements]
    table = np.array(rows, np.int64).reshape(-1, 3)
    xy = np.array([reconstruction.images[int(i)].points2D[int(j)].xy for i, j, _ in table],
                  np.float64).reshape(-1, 2)
    return Observations(table[:, 0], table[:, 1], table[:, 2], xy)


def projections(reconstruction: pycolmap.Reconstruction, observations: Observations) -> np.ndarray:
    """(N, 2) COLMAP pixels where each observation's 3D point projects (NaN behind the camera)."""
    projected = np.full((len(observations.point_ids), 2), np.nan)
    for chosen in split_by(observations.image_ids):
        image = reconstruction.images[int(observations.image_ids[chosen[0]])]
        points = np.array([reconstruction.points3D[int(p)].xyz for p in observations.point_ids[chosen]])
        in_camera = points @ image.cam_from_world().rotation.matrix().T + image.cam_from_world().translation
        projected[chosen] = reconstruction.cameras[image.camera_id].img_from_cam(in_camera)
    return projected


def reference_rows(point_ids: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """(N,) bool: each point's best-reprojecting observation (ties: the first)."""
    order = np.lexsort((errors, point_ids))
    first = np.ones(len(order), bool)
    first[1:] = point_ids[order][1:] != point_ids[order][:-1]
    chosen = np.zeros(len(point_ids), bool)
    chosen[order[first]] = True
    return chosen


def realign(reconstruction: pycolmap.Reconstruction, observations: Observations, load_image: ImageLoader,
            config: RefineConfig, device: torch.device, timings: dict[str, float] | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Aligned COLMAP pixels (N, 2), whether each alignment passed (N,), and each observation's
    information matrix (N, 2, 2) in original pixels. The references keep their position; the others
    start at theirs. timings: gets the seconds of its phases."""
    timings = {} if timings is None else timings
    tick = time.time()
    count = len(observations.point_ids)
    names = {i: reconstruction.images[int(i)].name for i in np.unique(observations.image_ids)}
    errors = np.linalg.norm(projections(reconstruction, observations) - observations.xy, axis=1)
    is_reference = reference_rows(observations.point_ids, np.nan_to_num(errors, nan=np.inf))
    point_of, compact = np.unique(observations.point_ids, return_inverse=True)
    reference_of = np.zeros(len(point_of), np.int64)
    reference_of[compact[is_reference]] = np.flatnonzero(is_reference)

    stacks: dict[int, tuple[torch.Tensor, np.ndarray]] = {}  # every image of the model, prepared once

    def stack(image_id: int) -> tuple[torch.Tensor, np.ndarray]:
        if image_id not in stacks:
            stacks[image_id] = load_image(names[image_id])
        return stacks[image_id]

    working = np.zeros((count, 2), np.float32)
    for chosen in split_by(observations.image_ids):
        working[chosen] = to_working(observations.xy[chosen] - 0.5, stack(int(observations.image_ids[chosen[0]]))[1])
    size = config.patch.size
    channels = 3 if config.patch.colour else 1
    template = torch.zeros((len(point_of), size * size * channels), device=device)
    for chosen in split_by(observations.image_ids[is_reference]):
        rows = np.flatnonzero(is_reference)[chosen]
        template[torch.from_numpy(compact[rows]).to(device)] = templates(
            stack(int(observations.image_ids[rows[0]]))[0], torch.from_numpy(working[rows]).to(device), size)

    timings["templates"], tick = time.time() - tick, time.time()
    free = ~is_reference
    reference = reference_of[compact]  # (N,) each observation's reference row
    linear = np.tile(np.eye(2, dtype=np.float32), (count, 1, 1))  # references: their own patch
    linear[free] = linear_parts(track_members(compact, observations.image_ids, working),
                                observations.image_ids[reference[free]], observations.image_ids[free],
                                working[reference[free]], config.affine, device)
    timings["linear"], tick = time.time() - tick, time.time()
    aligned = observations.xy.copy()
    passed = np.ones(count, bool)
    information = np.zeros((count, 2, 2))
    patch = replace(config.patch, bound=config.bundle.bound, affine_steps=config.bundle.affine_steps)

    def align_image(chosen: np.ndarray) -> None:
        """Aligns the observations `chosen` (all in one image), writing their rows of the outputs."""
        image_stack, scale = stack(int(observations.image_ids[chosen[0]]))
        hessian = torch.zeros((len(chosen), 2, 2), device=device)
        for references, rows in ((True, chosen[is_reference[chosen]]), (False, chosen[~is_reference[chosen]])):
            if len(rows) == 0:
                continue
            inputs = (image_stack, template[torch.from_numpy(compact[rows]).to(device)],
                      torch.from_numpy(working[rows]).to(device), torch.from_numpy(linear[rows]).to(device), patch)
            where = torch.from_numpy(is_reference[chosen] == references).to(device)
            if references:  # they stay: only how sharply their patches fix them
                hessian[where] = translation_information(*inputs)
                continue
            result = align_with_fallback(*inputs)
            aligned[rows] = to_original(result.points.cpu().numpy(), scale) + 0.5
            passed[rows] = result.ok.cpu().numpy()
            hessian[where] = result.information
        information[chosen] = scale[None, :, None] * hessian.cpu().double().numpy() * scale[None, None, :]

    map_single_threaded(align_image, split_by(observations.image_ids), device)  # disjoint rows per image
    timings["align"] = time.time() - tick
    return aligned, passed, information


def align_with_fallback(stack: torch.Tensor, template: torch.Tensor, start: torch.Tensor, linear: torch.Tensor,
                        patch: PatchConfig) -> Alignment:
    """Affine alignment; where its warp ends implausibly distorted (kermit: 194 of 272 failures,
    edges and weak texture leave the linear part free), translation with the initial linear part."""
    result = align_detailed(stack, template, start, linear, patch)
    retry = torch.nonzero(~result.ok)[:, 0]
    if len(retry) and patch.affine_steps:
        steps = patch.translation_steps + patch.affine_steps
        fallback = align_detailed(stack, template[retry], start[retry], linear[retry],
                                  replace(patch, translation_steps=steps, affine_steps=0))
        for name in ("points", "ncc", "ok", "information"):
            getattr(result, name)[retry] = getattr(fallback, name)
    return result


def scaled_information(information: np.ndarray, config: RefineConfig) -> np.ndarray:
    """Information matrices (N, 2, 2) scaled so that the median observation's mean eigenvalue is
    1 / pixel_sigma^2, with every eigenvalue at least `information_floor` of the mean one."""
    information = 0.5 * (information + information.transpose(0, 2, 1))
    mean_eigen = np.trace(information, axis1=1, axis2=2) / 2
    scale = np.median(mean_eigen[mean_eigen > 0]) if np.any(mean_eigen > 0) else 1.0
    floored = information + config.bundle.information_floor * mean_eigen[:, None, None] * np.eye(2)
    return floored / scale / config.bundle.pixel_sigma ** 2


def normalised_targets(reconstruction: pycolmap.Reconstruction, observations: Observations, xy: np.ndarray,
                       information: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Targets (N, 2) on the normalised image plane and their information there (N, 2, 2), through
    each camera model's Jacobian at the target (pixels = J normalised + const, locally)."""
    targets = np.zeros_like(xy)
    normalised_information = np.zeros_like(information)
    step = 1e-6
    for chosen in split_by(observations.image_ids):
        camera = reconstruction.cameras[reconstruction.images[int(observations.image_ids[chosen[0]])].camera_id]
        plane = camera.cam_from_img(xy[chosen])
        columns = []
        for axis in range(2):
            offset = np.zeros(2)
            offset[axis] = step
            ahead = camera.img_from_cam(np.c_[plane + offset, np.ones(len(chosen))])
            behind = camera.img_from_cam(np.c_[plane - offset, np.ones(len(chosen))])
            columns.append((ahead - behind) / (2 * step))
        jacobian = np.stack(columns, -1)  # (n, 2 pixels, 2 plane)
        targets[chosen] = plane
        normalised_information[chosen] = jacobian.transpose(0, 2, 1) @ information[chosen] @ jacobian
    return targets, normalised_information


def free_parameters(camera: pycolmap.Camera) -> list[int]:
    """The parameters self-calibration refines, as in COLMAP's mapping: focal lengths and distortion,
    not the principal point."""
    return [int(i) for i in (*camera.focal_length_idxs(), *camera.extra_params_idxs())]


def target_intrinsics(reconstruction: pycolmap.Reconstruction, observations: Observations,
                      camera_ids: list[int]) -> TargetIntrinsics:
    """How each observation's normalised target moves with its camera's free parameters (central
    differences of the camera model's cam_from_img at its keypoint), for the cameras `camera_ids`."""
    count = len(observations.point_ids)
    size = max(len(free_parameters(reconstruction.cameras[c])) for c in camera_ids)
    jacobians = np.zeros((count, 2, size))
    camera_index = np.full(count, -1, np.int64)
    camera_of = np.array([reconstruction.images[int(i)].camera_id for i in observations.image_ids], np.int64)
    for slot, camera_id in enumerate(camera_ids):
        rows = np.flatnonzero(camera_of == camera_id)
        camera_index[rows] = slot
        camera = reconstruction.cameras[camera_id]
        params = np.array(camera.params, np.float64)
        for column, index in enumerate(free_parameters(camera)):
            step = 1e-6 * max(abs(params[index]), 1.0)
            moved = []
            for sign in (1, -1):
                shifted = pycolmap.Camera(model=camera.model, width=camera.width, height=camera.height,
                                          params=params + sign * step * np.eye(len(params))[index])
                moved.append(shifted.cam_from_img(observations.xy[rows]))
            jacobians[rows, :, column] = (moved[0] - moved[1]) / (2 * step)
    return TargetIntrinsics(torch.from_numpy(camera_index), torch.from_numpy(jacobians), len(camera_ids))


def adjust_geometry(reconstruction: pycolmap.Reconstruction, observations: Observations, targets: np.ndarray,
                    weights: np.ndarray, config: RefineConfig, constant_poses: bool,
                    free_cameras: list[int] = ()) -> dict[str, object]:
    """Poses (unless constant), points and the free cameras' focal lengths and distortion minimising
    the weighted reprojection cost of normalised `targets` (N, 2) with information `weights`
    (N, 2, 2); written back."""
    image_ids = np.unique(observations.image_ids)
    point_ids, point_index = np.unique(observations.point_ids, return_inverse=True)
    image_index = np.searchsorted(image_ids, observations.image_ids)
    poses = [reconstruction.images[int(i)].cam_from_world() for i in image_ids]
    free_cameras = sorted({int(c) for c in free_cameras} & {reconstruction.images[int(i)].camera_id
                                                            for i in image_ids})
    as_tensor = lambda values: torch.from_numpy(np.ascontiguousarray(values, np.float64))  # noqa: E731
    rotations, translations, points, report = solve_weighted_bundle(
        as_tensor([pose.rotation.matrix() for pose in poses]), as_tensor([pose.translation for pose in poses]),
        as_tensor([reconstruction.points3D[int(p)].xyz for p in point_ids]),
        torch.from_numpy(image_index), torch.from_numpy(point_index), as_tensor(targets), as_tensor(weights),
        torch.full((len(image_ids),), constant_poses),
        BundleSolverConfig(max_iterations=config.bundle.max_iterations, loss_scale=config.bundle.loss_scale,
                           function_tolerance=config.bundle.function_tolerance),
        target_intrinsics(reconstruction, observations, free_cameras) if free_cameras else None)
    if not constant_poses:
        for image_id, rotation, translation in zip(image_ids, rotations.numpy(), translations.numpy()):
            frame = reconstruction.frames[reconstruction.images[int(image_id)].frame_id]
            frame.rig_from_world = pycolmap.Rigid3d(pycolmap.Rotation3d(rotation), translation)
    for point_id, xyz in zip(point_ids, points.numpy()):
        reconstruction.points3D[int(point_id)].xyz = xyz
    intrinsics = {}
    for camera_id, step in zip(free_cameras, report.intrinsics_step.numpy() if free_cameras else []):
        camera = reconstruction.cameras[camera_id]
        params = np.array(camera.params, np.float64)
        before, free = params.copy(), free_parameters(camera)
        params[free] += step[:len(free)]
        camera.params = params
        reconstruction.cameras[camera_id] = camera
        intrinsics[str(camera_id)] = {"before": before.tolist(), "after": params.tolist()}
    return {"initial_cost": report.initial_cost, "final_cost": report.final_cost, "iterations": report.iterations,
            "converged": report.converged, "intrinsics": intrinsics}


def solver_inputs(reconstruction: pycolmap.Reconstruction, aligned: Observations, information: np.ndarray,
                  config: RefineConfig) -> tuple[Observations, np.ndarray, np.ndarray, int]:
    """The model's observations after the photometric test, their normalised targets and weights,
    and how many observations left because their camera model could not undistort them (strong
    distortion at the image border gives NaN)."""
    def current() -> tuple[Observations, np.ndarray, np.ndarray]:
        kept = gather_observations(reconstruction)
        row_of = {key: row for row, key in enumerate(zip(aligned.image_ids.tolist(), aligned.point2D_idx.tolist()))}
        rows = np.array([row_of[key] for key in zip(kept.image_ids.tolist(), kept.point2D_idx.tolist())], np.int64)
        return (kept, *normalised_targets(reconstruction, kept, kept.xy, scaled_information(information[rows],
                                                                                             config)))
    kept, targets, weights = current()
    usable = np.isfinite(targets).all(1) & np.isfinite(weights).all((1, 2))
    if usable.all():
        return kept, targets, weights, 0
    dropped = delete_observations(reconstruction, kept, ~usable)
    return (*current(), dropped)


def delete_observations(reconstruction: pycolmap.Reconstruction, observations: Observations,
                        rows: np.ndarray) -> int:
    """Removes the given observations (a point left with one observation goes too, as in COLMAP)."""
    for row in np.flatnonzero(rows):
        point_id = int(observations.point_ids[row])
        if reconstruction.exists_point3D(point_id):
            reconstruction.delete_observation(int(observations.image_ids[row]), int(observations.point2D_idx[row]))
    return int(rows.sum())


def check_trivial_rigs(reconstruction: pycolmap.Reconstruction) -> None:
    for image in reconstruction.images.values():
        if image.has_pose and not np.allclose(
                image.cam_from_world().matrix(), reconstruction.frames[image.frame_id].rig_from_world.matrix()):
            raise BundleError(f"image {image.name} is not its frame's only, reference sensor: the bundle "
                              "adjustment handles single-camera frames only (use --refine keypoints)")


def adjust_reconstruction(reconstruction: pycolmap.Reconstruction, load_image: ImageLoader,
                          config: RefineConfig = RefineConfig(mode="keypoints+bundle"),
                          device: torch.device | str = "cpu", constant_poses: bool = False,
                          free_cameras: list[int] = ()) -> BundleReport:
    """Featuremetric bundle adjustment of `reconstruction`, in place (see the module docstring).
    `constant_poses`: only the points move (triangulation against known poses); `free_cameras`:
    the cameras whose focal lengths and distortion are refined too (self-calibrated ones)."""
    start_time = time.time()
    device = torch.device(device)
    check_trivial_rigs(reconstruction)
    report = BundleReport(observations=int(reconstruction.compute_num_observations()))
    error_before = reconstruction.compute_mean_reprojection_error()
    observations = gather_observations(reconstruction)
    if len(observations.point_ids):
        aligned, passed, information = realign(reconstruction, observations, load_image, config, device,
                                               report.timings)
        tick = time.time()
        report.realigned = int(passed.sum())
        shifts = np.linalg.norm(aligned - observations.xy, axis=1)[passed]
        report.median_shift_px = float(np.median(shifts)) if len(shifts) else 0.0
        for row in np.flatnonzero(passed):
            reconstruction.images[int(observations.image_ids[row])].points2D[
                int(observations.point2D_idx[row])].xy = aligned[row]
        report.photometric_outliers = delete_observations(reconstruction, observations, ~passed)
        kept, targets, weights, report.undistortion_failures = solver_inputs(reconstruction, observations,
                                                                             information, config)
        report.timings["inputs"], tick = time.time() - tick, time.time()
        report.solver = adjust_geometry(reconstruction, kept, targets, weights, config, constant_poses, free_cameras)
        report.timings["solve"], tick = time.time() - tick, time.time()
        final = gather_observations(reconstruction)
        errors = np.linalg.norm(projections(reconstruction, final) - final.xy, axis=1)
        report.reprojection_outliers = delete_observations(
            reconstruction, final, ~(errors <= config.bundle.max_reprojection_error))
        report.timings["filter"] = time.time() - tick
    reconstruction.update_point_3d_errors()  # COLMAP's per-point errors, which its mean reads
    report.reprojection_error = (error_before, reconstruction.compute_mean_reprojection_error())
    report.seconds = time.time() - start_time
    logger.info("Bundle adjustment: %d observations realigned (median shift %.2f px), %d left as photometric "
                "outliers, %d as reprojection outliers; mean reprojection error %.3f -> %.3f px (%.1f s)",
                report.realigned, report.median_shift_px, report.photometric_outliers,
                report.reprojection_outliers, *report.reprojection_error, report.seconds)
    return report
