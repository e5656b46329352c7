"""Is self-calibration determined by the matches? The focal length's standard deviation from the
bundle-adjustment covariance of the model as it stands.

A narrow field of view seen from few views leaves the focal length and the rotations trading off
against each other: the mapper then settles anywhere along that valley, and the model's relative
rotations scale with the focal it picked. D2 on the Middlebury temple (true focal 1520 px) built a
5-view model with a 566 px focal, radial distortion -0.33, every relative rotation about 0.4x the
truth, and nothing else looked wrong. The covariance says so: the focal is known to +-10 % there,
against 0.2-0.8 % on kermit, Sceaux and the sample scene.
"""
from __future__ import annotations

import logging

import numpy as np

from ..colmap import pycolmap

logger = logging.getLogger(__name__)


def rms_reprojection_error(reconstruction: pycolmap.Reconstruction) -> float:
    """Root mean square reprojection error over the observations (px): the noise level that scales
    the unit-noise covariance. Each point's error is its observations' mean, weighted by their number."""
    errors = np.array([(point.error, point.track.length()) for point in reconstruction.points3D.values()])
    if not len(errors):
        return float("nan")
    return float(np.sqrt(np.sum(errors[:, 0] ** 2 * errors[:, 1]) / np.sum(errors[:, 1])))


def focal_uncertainties(reconstruction: pycolmap.Reconstruction, camera_ids: list[int]) -> dict[int, float]:
    """Relative standard deviation of each listed camera's mean focal length (sigma_f / f), from the
    covariance of a bundle adjustment over the registered images at the model's current state (not
    re-solved), scaled by the model's RMS reprojection error. Cameras not listed are held constant.
    NaN where the covariance cannot be estimated."""
    registered = [image_id for image_id, image in reconstruction.images.items() if image.has_pose]
    if len(registered) < 2 or not camera_ids:
        return {camera_id: float("nan") for camera_id in camera_ids}
    config = pycolmap.BundleAdjustmentConfig()
    for image_id in registered:
        config.add_image(image_id)
    for camera_id in reconstruction.cameras:
        if camera_id not in camera_ids:
            config.set_constant_cam_intrinsics(camera_id)
    config.fix_gauge(pycolmap.BundleAdjustmentGauge.TWO_CAMS_FROM_WORLD)
    options = pycolmap.BundleAdjustmentOptions()
    options.refine_principal_point = False  # as in mapping: only the focal length and distortion move
    try:
        adjuster = pycolmap.create_default_ceres_bundle_adjuster(options, config, reconstruction)
        covariance = pycolmap.estimate_ba_covariance(pycolmap.BACovarianceOptions(), reconstruction, adjuster)
    except (RuntimeError, ValueError) as error:  # a degenerate problem: no verdict rather than no summary
        logger.warning("Focal-length uncertainty not estimated: %s", error)
        covariance = None
    noise = rms_reprojection_error(reconstruction)
    result = {}
    for camera_id in camera_ids:
        camera = reconstruction.cameras[camera_id]
        block = covariance.get_other_params_cov(camera.params) if covariance is not None else None
        result[camera_id] = relative_focal_deviation(block, camera, noise)
    return result


def relative_focal_deviation(block: np.ndarray | None, camera: pycolmap.Camera, noise: float) -> float:
    """sigma of the mean focal length over the focal, from the camera's parameter covariance at
    unit pixel noise (rows: its variable parameters, focal lengths first as COLMAP orders them)."""
    focal_idxs = camera.focal_length_idxs()
    if block is None or block.shape[0] < len(focal_idxs):
        return float("nan")
    focal_block = np.asarray(block)[np.ix_(range(len(focal_idxs)), range(len(focal_idxs)))]
    variance = focal_block.sum() / len(focal_idxs) ** 2  # variance of the mean of the focal lengths
    return float(np.sqrt(max(variance, 0.0)) * noise / camera.mean_focal_length())
