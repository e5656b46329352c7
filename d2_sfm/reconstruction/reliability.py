"""Model assessment: registrations that rest on weak evidence (weak pairs only, few 3D points),
intrinsics that self-calibration pushed to implausible values or that the matches leave undetermined;
any of them flags the model UNRELIABLE.
D2 features on symmetric, weakly textured objects produce confident but wrong pairs and
ill-determined poses, and these are their symptoms."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse
from scipy.sparse.csgraph import connected_components

from ..colmap import pycolmap
from ..colmap_import import PairStats, verified_graph
from ..colmap_readonly import read_cameras
from .calibration import focal_uncertainties

logger = logging.getLogger(__name__)

RADIAL_MODELS = ("SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV")  # first extra parameter is k1


@dataclass(frozen=True)
class ReliabilityConfig:
    """When a registered image, or the whole model, is flagged as resting on weak evidence."""
    strong_pair_inliers: int = 75  # images outside the largest group linked by pairs this strong are weak
    min_image_points3D: int = 30  # and observe this many 3D points (COLMAP registers with 30 inliers)
    max_focal_change: float = 1.5  # refined / EXIF prior focal outside [1/x, x] -> flagged
    max_focal_change_without_prior: float = 1.6  # same against pycolmap's default 1.2 * max(W, H)
    max_radial_distortion: float = 0.5  # |k1| above this (normalised coordinates) is implausible
    # Self-calibrated focal lengths with a larger relative standard deviation (bundle-adjustment
    # covariance at the model's reprojection noise) are not determined by the matches. Measured:
    # kermit, Sceaux, sample scene 0.2-0.9 % (either mapper, with or without refinement); temple
    # without known intrinsics 3.0 % (refine none) and 13 % (a wrong model with refinement).
    max_focal_uncertainty: float = 0.02
    # ... on cameras holding more than this share of the registered images: one view with its own
    # ill-determined camera (kermit with a camera per image: view 006, 2.8 %) is a local weakness,
    # not a model whose rotations all trade off against a shared focal length
    max_undetermined_share: float = 0.5
    calibration_max_images: int = 1000  # skip the covariance on larger models (dense in the poses)
    # Stability: map again from other strong initial pairs and compare relative rotations. D2 on the
    # temple gave 1.8-5 deg median (5-12 deg max) disagreement between such runs, kermit <= 1.2 (max 3),
    # the sample scene < 0.1: a model that moves this much with its starting pair is not trustworthy.
    stability_runs: int = 2  # extra mapping runs (0: off)
    stability_max_images: int = 150  # skip the check on larger sets (it multiplies the mapping time)
    max_stability_median_deg: float = 2.5
    max_stability_deg: float = 6.0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class Assessment:
    status: str = "ok"  # ok | partial (not every image registered) | unreliable
    warnings: list[str] = field(default_factory=list)
    weak_images: dict[str, str] = field(default_factory=dict)  # name -> why its registration is weak
    focal_uncertainty: dict[int, float] = field(default_factory=dict)  # self-calibrated camera -> sigma_f / f


def assess_model(reconstruction: pycolmap.Reconstruction, pair_stats: list[PairStats],
                 camera_sources: dict[str, str], initial_cameras: dict[int, pycolmap.Camera],
                 num_images: int, config: ReliabilityConfig,
                 registration_points: dict[str, int] | None = None) -> Assessment:
    """Flag registrations that rest on weak evidence, and implausible focal lengths.

    `registration_points`: the 3D points each image observed when the mapper registered it, where
    a later stage (the featuremetric bundle adjustment) dropped observations by a stricter test;
    by default the model's own counts."""
    assessment = Assessment()
    registered = {im.name: im for im in reconstruction.images.values() if im.has_pose}
    core = strongly_connected_core(sorted(registered), verified_graph(pair_stats),
                                   config.strong_pair_inliers)
    for name, image in registered.items():
        observed = (registration_points or {}).get(name, image.num_points3D)
        if name not in core:
            assessment.weak_images[name] = (f"linked to the main group of {len(core)} images only through verified "
                                            f"pairs with fewer than {config.strong_pair_inliers} inliers"
                                            if core else f"no verified pair with {config.strong_pair_inliers}+ "
                                            "inliers to another registered image")
        elif observed < config.min_image_points3D:
            assessment.weak_images[name] = f"observes {observed} 3D points (< {config.min_image_points3D})"
    camera_names = {camera_id: sorted(n for n, im in registered.items() if im.camera_id == camera_id)
                    for camera_id in reconstruction.cameras}
    camera_names = {camera_id: names for camera_id, names in camera_names.items() if names}
    for camera_id, names in camera_names.items():
        assessment.warnings += camera_warnings(reconstruction.cameras[camera_id], initial_cameras.get(camera_id),
                                               camera_sources.get(names[0], "default"), names, config)
    assessment.focal_uncertainty = self_calibration_uncertainty(reconstruction, camera_names, camera_sources, config)
    assessment.warnings += calibration_warnings(reconstruction, camera_names, assessment.focal_uncertainty, config)
    by_reason: dict[str, list[str]] = {}
    for name, reason in sorted(assessment.weak_images.items()):
        by_reason.setdefault(reason, []).append(name)
    for reason, names in by_reason.items():
        assessment.warnings.append(f"{len(names)} registered image(s) rest on weak evidence ({reason}): "
                                   + ", ".join(names))
    if assessment.warnings:
        assessment.status = "unreliable"
    elif len(registered) < num_images:
        assessment.status = "partial"
    return assessment


def strongly_connected_core(names: list[str], graph: dict[str, dict[str, int]], min_inliers: int) -> set[str]:
    """Largest group of `names` connected by pairs with at least `min_inliers` verified inliers.

    Images outside it were registered through weak pairs only: on repetitive or symmetric objects
    those are exactly the confident false pairs (e.g. temple views 100-170 degrees apart with 50 inliers).
    Empty when no two images are so connected; among equally large groups, the one holding the
    alphabetically first name.
    """
    order = sorted(set(names))
    if not order:
        return set()
    index = {name: i for i, name in enumerate(order)}
    edges = [(index[name], index[other]) for name in order for other, inliers in graph.get(name, {}).items()
             if other in index and inliers >= min_inliers]
    rows, cols = (list(ends) for ends in zip(*edges)) if edges else ([], [])
    adjacency = scipy.sparse.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(order), len(order)))
    count, labels = connected_components(adjacency, directed=False)
    sizes = np.bincount(labels, minlength=count)
    # Ties between largest groups: the one holding the alphabetically first name, whatever the labelling.
    first = np.full(count, len(order))
    np.minimum.at(first, labels, np.arange(len(order)))
    largest = np.flatnonzero(sizes == sizes.max())
    best = largest[np.argmin(first[largest])]
    return {order[i] for i in np.flatnonzero(labels == best)} if sizes[best] > 1 else set()


def camera_warnings(camera: pycolmap.Camera, prior: pycolmap.Camera | None, source: str, names: list[str],
                    config: ReliabilityConfig) -> list[str]:
    """Intrinsics that self-calibration pushed to implausible values (a known symptom of wrong models)."""
    warnings = []
    label = camera_label(camera, names)
    if prior is not None and source != "known":
        change = camera.mean_focal_length() / prior.mean_focal_length()
        limit = config.max_focal_change if source == "exif" else config.max_focal_change_without_prior
        if not 1 / limit <= change <= limit:
            what = "its EXIF prior" if source == "exif" else "pycolmap's default guess (no EXIF focal)"
            warnings.append(f"{label}: focal length {camera.mean_focal_length():.0f} px moved x{change:.2f} from "
                            f"{what} {prior.mean_focal_length():.0f} px; self-calibration is unreliable here: give "
                            "--camera-params or --intrinsics")
    extra = [camera.params[i] for i in camera.extra_params_idxs()]
    if camera.model.name in RADIAL_MODELS and abs(extra[0]) > config.max_radial_distortion:
        warnings.append(f"{label}: radial distortion {extra[0]:.2f} is implausible")
    return warnings


def self_calibration_uncertainty(reconstruction: pycolmap.Reconstruction, camera_names: dict[int, list[str]],
                                 camera_sources: dict[str, str], config: ReliabilityConfig) -> dict[int, float]:
    """sigma_f / f of the self-calibrated cameras (not given as known); none on large models."""
    calibrated = [camera_id for camera_id, names in camera_names.items()
                  if camera_sources.get(names[0], "default") != "known"]
    if sum(len(names) for names in camera_names.values()) > config.calibration_max_images:
        return {}
    return focal_uncertainties(reconstruction, calibrated) if calibrated else {}


def calibration_warnings(reconstruction: pycolmap.Reconstruction, camera_names: dict[int, list[str]],
                         deviations: dict[int, float], config: ReliabilityConfig) -> list[str]:
    """Self-calibrated cameras whose focal length the matches leave undetermined (see calibration),
    when they hold a large share of the registered images."""
    undetermined = {camera_id: deviation for camera_id, deviation in deviations.items()
                    if deviation > config.max_focal_uncertainty}
    affected = sum(len(camera_names[camera_id]) for camera_id in undetermined)
    registered = sum(len(names) for names in camera_names.values())
    described = [f"{camera_label(reconstruction.cameras[camera_id], camera_names[camera_id])}: focal length "
                 f"{reconstruction.cameras[camera_id].mean_focal_length():.0f} px +-{100 * deviation:.1f} %"
                 for camera_id, deviation in undetermined.items()]
    if not undetermined or affected <= config.max_undetermined_share * registered:
        if undetermined:
            logger.info("Self-calibration leaves the focal length of %d of %d registered images undetermined "
                        "(one standard deviation): %s", affected, registered, "; ".join(described))
        return []
    return [f"the matches do not determine the focal length (one standard deviation above "
            f"{100 * config.max_focal_uncertainty:.0f} %) of {affected} of {registered} registered images: "
            + "; ".join(described) + "; self-calibration is unreliable here: give --camera-params or --intrinsics"]


def camera_label(camera: pycolmap.Camera, names: list[str]) -> str:
    return f"camera {camera.camera_id} ({names[0]}{', ...' if len(names) > 1 else ''})"


def initial_cameras(database: Path) -> dict[int, pycolmap.Camera]:
    """The database's cameras before mapping: the priors that assess_model compares with (read
    without modifying the database)."""
    return read_cameras(database)
