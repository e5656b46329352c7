"""Pipeline step: localize queries through database cutouts with per-pixel 3D (InLoc; hloc
`localize_inloc`).

Each retrieved cutout `<name>.jpg` has a scan `XYZcut` (H, W, 3, NaN where the scanner saw
nothing) in its building's local frame, and an alignment that maps that frame to the world. The
cutout keypoints of the matches are looked up in `XYZcut` (bilinear, then nearest where bilinear
meets a NaN, as hloc), mapped to the world and given to pycolmap with the query keypoints.

Pixel conventions: HDF5 keypoints have integer = pixel centre, so keypoint (x, y) lies on
XYZcut[y, x] when the scan has the image's resolution (otherwise it is scaled exactly: (kp + 0.5)
* s - 0.5). Query keypoints get +0.5 for the COLMAP camera. (hloc leaves out that +0.5 and uses
cx = W/2, a half-pixel shift; this step does not.) With a `refiner` (`--refine keypoints`), each
correspondence's query keypoint is first aligned to its cutout keypoint.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..colmap import pycolmap
from ..executors import ExecutorConfig
from ..h5io import H5File, open_h5, read_image_size, read_keypoints, read_matches
from .estimation import (KeypointRefiner, PoseCandidate, PoseEstimationConfig, QueryLog, QueryProblem, QueryResult,
                         colmap_points, localize_queries)

logger = logging.getLogger(__name__)

# name of a cutout -> its per-pixel world points (H, W, 3) float, NaN where unknown; None when the
# cutout's scan is unusable (the caller has warned; the cutout is skipped and listed in the result)
CutoutPoints = Callable[[str], "np.ndarray | None"]


@dataclass(frozen=True)
class CutoutLocalizationConfig:
    estimation: PoseEstimationConfig = field(
        default_factory=lambda: PoseEstimationConfig(ransac_max_error=48.0))  # hloc localize_inloc
    min_matches: int = 20  # skip a cutout with fewer matches (hloc skip_matches)


def sample_points(xyz: np.ndarray, keypoints: np.ndarray, image_size: tuple[int, int] | None = None
                  ) -> np.ndarray:
    """3D points (N, 3) at keypoints (N, 2) x, y (integer = pixel centre); NaN rows where unknown.

    xyz: (H, W, 3) per-pixel points. image_size (W, H) of the image the keypoints belong to, when
    it differs from the scan's. Bilinear interpolation needs 4 valid corners; elsewhere the
    nearest pixel is used (NaN if it is NaN too, or if the keypoint lies outside the scan).
    """
    height, width = xyz.shape[:2]
    points = np.asarray(keypoints, np.float64).reshape(-1, 2).copy()
    if image_size is not None and tuple(image_size) != (width, height):
        points = (points + 0.5) * (np.array([width, height]) / np.asarray(image_size, np.float64)) - 0.5
    x, y = points[:, 0], points[:, 1]
    out = np.full((len(points), 3), np.nan)
    inside = (x > -0.5) & (x < width - 0.5) & (y > -0.5) & (y < height - 0.5)
    x0 = np.clip(np.floor(x), 0, width - 2).astype(int)
    y0 = np.clip(np.floor(y), 0, height - 2).astype(int)
    ax = np.clip(x - x0, 0, 1)[:, None]
    ay = np.clip(y - y0, 0, 1)[:, None]
    bilinear = ((1 - ax) * (1 - ay) * xyz[y0, x0] + ax * (1 - ay) * xyz[y0, x0 + 1]
                + (1 - ax) * ay * xyz[y0 + 1, x0] + ax * ay * xyz[y0 + 1, x0 + 1])
    nearest = xyz[np.clip(np.rint(y), 0, height - 1).astype(int), np.clip(np.rint(x), 0, width - 1).astype(int)]
    use_bilinear = np.isfinite(bilinear).all(1)
    out[inside] = np.where(use_bilinear[:, None], bilinear, nearest)[inside]
    return out


class CutoutLocalizer:
    def __init__(self, cutout_points: CutoutPoints, features: H5File, matches: H5File,
                 config: CutoutLocalizationConfig, refiner: KeypointRefiner | None = None):
        self.cutout_points = cutout_points
        self.refiner = refiner
        self.features = features
        self.matches = matches
        self.config = config
        self.skipped: dict[str, str] = {}  # cutouts of the current query left out, and why

    def correspondences(self, query: str, db_names: list[str]
                        ) -> tuple[np.ndarray, np.ndarray, list[str], list[str], np.ndarray]:
        """Query keypoint indices (M,), world points (M, 3), the cutouts used and, per row, the
        cutout (M,) and cutout keypoint (M, 2) it was matched to, over all retrieved cutouts."""
        indices, points, used, db_keypoints = [], [], [], []
        for db_name in db_names:
            pairs, _ = read_matches(self.matches, query, db_name)
            if len(pairs) < self.config.min_matches:
                continue
            keypoints = read_keypoints(self.features, db_name)
            image_size = read_image_size(self.features, db_name)
            scan = self.cutout_points(db_name)
            if scan is None:
                self.skipped[db_name] = "unusable XYZcut (see the warning naming its file)"
                continue
            xyz = sample_points(scan, keypoints[pairs[:, 1]], image_size)
            valid = np.isfinite(xyz).all(1)
            if valid.any():
                indices.append(pairs[valid, 0])
                points.append(xyz[valid])
                used.append(db_name)
                db_keypoints.append(keypoints[pairs[valid, 1]])
        if not indices:
            return np.zeros(0, np.int64), np.zeros((0, 3)), used, [], np.zeros((0, 2), np.float32)
        db_of_row = [name for name, kp in zip(used, db_keypoints) for _ in range(len(kp))]
        return np.concatenate(indices), np.concatenate(points), used, db_of_row, np.concatenate(db_keypoints)

    def problem(self, query: str, camera: pycolmap.Camera, db_names: list[str]) -> QueryProblem:
        """The 2D-3D matches of the query through the XYZcut of its retrieved cutouts."""
        start = time.time()
        keypoints = read_keypoints(self.features, query)
        self.skipped = {}
        kp_idx, points3D, used, db_of_row, db_keypoints = self.correspondences(query, db_names)
        result = QueryResult(query, num_correspondences=len(kp_idx), num_retrieved=len(db_names), db_used=used,
                             skipped_db=dict(self.skipped))
        if not db_names:
            result.failure = "no retrieved database image"
        elif len(kp_idx) == 0:
            result.failure = (f"no cutout has {self.config.min_matches} matches with valid 3D "
                              "(XYZcut) at the matched keypoints")
        points2D = keypoints[kp_idx]
        if self.refiner is not None and len(kp_idx):
            points2D = self.refiner(query, points2D, db_of_row, db_keypoints)
        candidate = PoseCandidate(result, colmap_points(points2D), points3D,
                                  no_pose=f"no pose from {len(kp_idx)} 2D-3D matches")
        return QueryProblem(camera, self.config.estimation, [candidate], len(db_names), time.time() - start)


def main(queries: dict[str, pycolmap.Camera], retrieval: dict[str, list[str]], features: Path,
         matches: Path, cutout_points: CutoutPoints,
         config: CutoutLocalizationConfig = CutoutLocalizationConfig(), log: QueryLog | None = None,
         executor: ExecutorConfig | None = None, refiner: KeypointRefiner | None = None) -> list[QueryResult]:
    """Localize every query (name -> camera) against its retrieved cutouts (resumable via `log`);
    `refiner`: query keypoint adjustment before PnP (None: the keypoints as they are)."""
    with (open_h5(features, "features file") as features_file,
          open_h5(matches, "matches file") as matches_file):
        localizer = CutoutLocalizer(cutout_points, features_file, matches_file, config, refiner)
        return localize_queries(localizer, queries, retrieval, log, executor)
