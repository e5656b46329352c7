"""Pipeline step: localize queries through a triangulated model (Aachen; hloc `localize_sfm`).

For each query, the matches to its retrieved database images are lifted to 2D-3D correspondences
through the model: a match whose database keypoint observes a 3D point gives (query keypoint, that
point). A query keypoint matched to several 3D points keeps each distinct one (as hloc).
With covisibility clustering, the retrieved images are split into groups that share 3D points, a
pose is estimated per group and the one with the most inliers wins (hloc's option, used for its
D2-Net numbers).

The model's 2D points must be the features file's keypoints in the same order (+0.5, COLMAP's
convention, possibly refined), which is how `d2_sfm.triangulate` builds it; the counts are checked
per image. With a `refiner` (`--refine keypoints`), each correspondence's query keypoint is aligned
to its database observation (the model's 2D point) before PnP.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..colmap import pycolmap
from ..executors import ExecutorConfig
from ..h5io import H5File, open_h5, read_keypoints, read_matches
from . import LocalizationError
from .estimation import (KeypointRefiner, PoseCandidate, PoseEstimationConfig, QueryLog, QueryProblem, QueryResult,
                         colmap_points, localize_queries)
from .model import ModelIndex, covisibility_clusters, load_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelLocalizationConfig:
    estimation: PoseEstimationConfig = field(default_factory=PoseEstimationConfig)
    covisibility_clustering: bool = False  # one pose per cluster of covisible db images, best kept


class ModelLocalizer:
    """Holds the model, features and matches open while localizing many queries."""

    def __init__(self, reconstruction: pycolmap.Reconstruction, features: H5File, matches: H5File,
                 config: ModelLocalizationConfig, refiner: KeypointRefiner | None = None):
        self.index = ModelIndex(reconstruction)
        self.refiner = refiner
        self.reconstruction = reconstruction
        self.features = features
        self.matches = matches
        self.config = config
        self._checked: set[int] = set()

    def db_point3D_ids(self, db_name: str) -> np.ndarray | None:
        image_id = self.index.image_ids.get(db_name)
        if image_id is None:
            return None
        ids = self.index.point3D_ids(image_id)
        if image_id not in self._checked:
            num_keypoints = len(read_keypoints(self.features, db_name))
            if num_keypoints != len(ids):
                raise LocalizationError(
                    f"the model's image {db_name} has {len(ids)} 2D points but {self.features.filename} "
                    f"has {num_keypoints} keypoints: triangulate again with these features")
            self._checked.add(image_id)
        return ids

    def correspondences(self, query: str, db_names: list[str]) -> tuple[np.ndarray, list[str]]:
        """Rows (query keypoint index, 3D point id, index into the used db images, db keypoint
        index), unique and sorted by (query keypoint, 3D point), the first db observation kept;
        and the db images that contributed."""
        rows, used = [], []
        for db_name in db_names:
            point3D_ids = self.db_point3D_ids(db_name)
            if point3D_ids is None:
                continue
            pairs, _ = read_matches(self.matches, query, db_name)
            lifted = point3D_ids[pairs[:, 1]]
            keep = lifted >= 0
            if keep.any():
                rows.append(np.stack([pairs[keep, 0], lifted[keep], np.full(keep.sum(), len(used)), pairs[keep, 1]],
                                     axis=1))
                used.append(db_name)
        if not rows:
            return np.zeros((0, 4), np.int64), used
        stacked = np.concatenate(rows)
        _, first = np.unique(stacked[:, :2], axis=0, return_index=True)
        return stacked[first], used

    def candidate(self, query: str, keypoints: np.ndarray, db_names: list[str]) -> PoseCandidate:
        """The 2D-3D matches of the query through the model points seen by `db_names`."""
        rows, used = self.correspondences(query, db_names)
        result = QueryResult(query, num_correspondences=len(rows), num_retrieved=len(db_names), db_used=used)
        if len(rows) == 0:
            result.failure = "no match of the query reaches a 3D point of the model"
            return PoseCandidate(result, np.zeros((0, 2)), np.zeros((0, 3)))
        points3D = np.array([self.reconstruction.point3D(int(i)).xyz for i in rows[:, 1]])
        points2D = keypoints[rows[:, 0]]
        if self.refiner is not None:
            db_keypoints = np.zeros((len(rows), 2))
            for i, db_name in enumerate(used):
                mine = rows[:, 2] == i
                db_keypoints[mine] = self.db_keypoints(db_name, rows[mine, 3])
            points2D = self.refiner(query, points2D, [used[i] for i in rows[:, 2]], db_keypoints)
        return PoseCandidate(result, colmap_points(points2D), points3D,
                             no_pose=f"no pose from {len(rows)} 2D-3D matches")

    def db_keypoints(self, db_name: str, indices: np.ndarray) -> np.ndarray:
        """The model's 2D points `indices` of a db image, in keypoint pixels (integer = pixel centre)."""
        points2D = self.reconstruction.image(self.index.image_ids[db_name]).points2D
        return np.array([points2D[int(i)].xy for i in indices], np.float64).reshape(-1, 2) - 0.5

    def problem(self, query: str, camera: pycolmap.Camera, db_names: list[str]) -> QueryProblem:
        """One candidate for all retrieved images, or one per covisibility cluster of them."""
        start = time.time()
        keypoints = read_keypoints(self.features, query)
        groups = [db_names]
        if self.config.covisibility_clustering:
            ids = [self.index.image_ids[n] for n in db_names if n in self.index.image_ids]
            groups = [[self.reconstruction.image(i).name for i in c]
                      for c in covisibility_clusters(self.index, ids)] or [db_names]
        candidates = [self.candidate(query, keypoints, group) for group in groups]
        return QueryProblem(camera, self.config.estimation, candidates, len(db_names), time.time() - start)


def main(reference: Path | pycolmap.Reconstruction, queries: dict[str, pycolmap.Camera],
         retrieval: dict[str, list[str]], features: Path, matches: Path,
         config: ModelLocalizationConfig = ModelLocalizationConfig(), log: QueryLog | None = None,
         executor: ExecutorConfig | None = None, refiner: KeypointRefiner | None = None) -> list[QueryResult]:
    """Localize every query of `queries` (name -> camera) against its retrieved db images.

    Queries already in `log` are not estimated again; new results are appended to it. `refiner`:
    query keypoint adjustment of the correspondences before PnP (None: the keypoints as they are).
    """
    reconstruction = load_model(reference)
    with (open_h5(features, "features file") as features_file,
          open_h5(matches, "matches file") as matches_file):
        localizer = ModelLocalizer(reconstruction, features_file, matches_file, config, refiner)
        return localize_queries(localizer, queries, retrieval, log, executor)
