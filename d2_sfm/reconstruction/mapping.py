"""Mapping: pycolmap's incremental mapper, or its global mapper (GLOMAP, merged into COLMAP 4:
rotation averaging and global positioning of all views at once, then bundle adjustment), on the
verified database of the `database` step. Both write every model to a folder; the best one
(most registered images, then most points) is the reconstruction."""
from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..colmap import pycolmap
from ..colmap_readonly import read_cameras
from ..errors import check_options
from . import MAPPERS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MapperConfig:
    """pycolmap mapping (IncrementalPipelineOptions / GlobalPipelineOptions)."""
    method: str = "incremental"  # one of MAPPERS
    min_num_matches: int = 15  # verified inliers for a pair to enter the correspondence / view graph
    init_min_num_inliers: int = 100  # incremental: initial pair
    abs_pose_min_num_inliers: int = 30  # incremental: registering a new image
    refine_known_intrinsics: bool = False  # known intrinsics (--camera-params) stay fixed by default
    multiple_models: bool = True
    random_seed: int = 0
    # Bundle adjustment threads. 1 makes mapping repeatable: with several threads, mapping the same
    # database gave 295 or 298 points from run to run (Ceres's parallel reductions), so a resumed run
    # could differ from an uninterrupted one. -1: all cores, faster, not bit-repeatable.
    num_threads: int = 1

    def __post_init__(self) -> None:
        check_options("mapper", method=self.method not in MAPPERS,
                      num_threads=self.num_threads == 0 or self.num_threads < -1,
                      min_num_matches=self.min_num_matches < 1, init_min_num_inliers=self.init_min_num_inliers < 1,
                      abs_pose_min_num_inliers=self.abs_pose_min_num_inliers < 1)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def mapper_options(config: MapperConfig, known_camera_ids: list[int]) -> pycolmap.IncrementalPipelineOptions:
    """Incremental mapping options (also those of the stability check's re-runs)."""
    options = pycolmap.IncrementalPipelineOptions()
    options.min_num_matches = config.min_num_matches
    options.multiple_models = config.multiple_models
    options.random_seed = config.random_seed
    options.num_threads = config.num_threads
    options.mapper.init_min_num_inliers = config.init_min_num_inliers
    options.mapper.abs_pose_min_num_inliers = config.abs_pose_min_num_inliers
    if known_camera_ids and not config.refine_known_intrinsics:
        options.constant_cameras = set(known_camera_ids)
    return options


def global_mapper_options(config: MapperConfig, intrinsics_known: bool,
                          prior_focal: float | None = None) -> pycolmap.GlobalPipelineOptions:
    """Global mapping options; known intrinsics (of every camera) stay fixed unless asked otherwise.
    `prior_focal` (px): observations are filtered at the incremental mapper's pixel threshold
    (4 px) where GLOMAP's 0.01 in normalised coordinates is looser: 27 px on Sceaux's 2832 px
    images (mean reprojection error 6.1 px there instead of 1.4, same 11 views)."""
    options = pycolmap.GlobalPipelineOptions()
    options.min_num_matches = config.min_num_matches
    options.multiple_models = config.multiple_models
    options.random_seed = config.random_seed
    options.num_threads = config.num_threads
    if prior_focal:
        max_error_px = pycolmap.IncrementalPipelineOptions().mapper.filter_max_reproj_error
        options.mapper.max_normalized_reproj_error = min(options.mapper.max_normalized_reproj_error,
                                                         max_error_px / prior_focal)
    if intrinsics_known and not config.refine_known_intrinsics:
        adjustment = options.mapper.bundle_adjustment
        adjustment.refine_focal_length = adjustment.refine_extra_params = False
        adjustment.refine_principal_point = False
    return options


def fresh_folder(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def incremental_mapping(database: Path, image_dir: Path, models_dir: Path, num_images: int,
                        options: pycolmap.IncrementalPipelineOptions) -> dict[int, pycolmap.Reconstruction]:
    """pycolmap's incremental mapper with a progress bar of registered images."""
    fresh_folder(models_dir)
    progress = tqdm(total=num_images, desc="map", unit="img")
    try:
        return pycolmap.incremental_mapping(str(database), str(image_dir), str(models_dir), options,
                                            initial_image_pair_callback=lambda: progress.update(2),
                                            next_image_callback=lambda: progress.update(1))
    finally:
        progress.close()


def global_mapping(database: Path, image_dir: Path, models_dir: Path, work_dir: Path,
                   options: pycolmap.GlobalPipelineOptions, calibrate: bool) -> dict[int, pycolmap.Reconstruction]:
    """pycolmap's global mapper on a copy of `database` (left untouched, so that a resume or another
    mapper reads it as the database step wrote it). `calibrate`: intrinsics are not all known, so
    focal lengths are first estimated from the view graph's fundamental matrices (in the copy)."""
    copy = fresh_folder(work_dir) / "database.db"
    try:
        if calibrate:
            models = global_mapping_once(database, copy, image_dir, models_dir, options, calibrate=True)
            if usable(models):
                return models
            # On weak view graphs (the 6-view, 320 px sample scene: 8 verified pairs) calibration
            # invalidated 3 pairs and the mapper then triangulated nothing; the priors registered 5 views.
            logger.warning("Global mapping after view-graph calibration built no model; mapping again with "
                           "the cameras' priors")
        return global_mapping_once(database, copy, image_dir, models_dir, options, calibrate=False)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def global_mapping_once(database: Path, copy: Path, image_dir: Path, models_dir: Path,
                        options: pycolmap.GlobalPipelineOptions, calibrate: bool) -> dict[int, pycolmap.Reconstruction]:
    shutil.copyfile(database, copy)
    fresh_folder(models_dir)
    if calibrate:
        # Relative poses stay as verification estimated them: re-estimating every pair took 14
        # CPU-s on the 12-view sample scene, calibration alone 0.02 s, for the same 12 views.
        calibration = pycolmap.ViewGraphCalibrationOptions(random_seed=options.random_seed,
                                                           reestimate_relative_pose=False)
        if not pycolmap.calibrate_view_graph(str(copy), calibration):
            logger.warning("View-graph calibration failed; mapping with the cameras' priors")
    logger.info("Global mapping (rotation averaging, global positioning, bundle adjustment)")
    return pycolmap.global_mapping(str(copy), str(image_dir), str(models_dir), options)


def usable(models: dict[int, pycolmap.Reconstruction]) -> bool:
    best = best_model(models)
    return best is not None and best.num_reg_images() >= 2


def map_images(config: MapperConfig, database: Path, image_dir: Path, models_dir: Path, work_dir: Path,
               num_images: int, known_camera_ids: list[int]) -> dict[int, pycolmap.Reconstruction]:
    """All models of the chosen mapper (raises ValueError / RuntimeError when pycolmap fails)."""
    if config.method == "incremental":
        return incremental_mapping(database, image_dir, models_dir, num_images,
                                   mapper_options(config, known_camera_ids))
    cameras = read_cameras(database)
    intrinsics_known = set(cameras) <= set(known_camera_ids)
    prior_focal = float(np.median([camera.mean_focal_length() for camera in cameras.values()])) if cameras else None
    return global_mapping(database, image_dir, models_dir, work_dir,
                          global_mapper_options(config, intrinsics_known, prior_focal), calibrate=not intrinsics_known)


def best_model(models: dict[int, pycolmap.Reconstruction]) -> pycolmap.Reconstruction | None:
    if not models:
        return None
    return max(models.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()))
