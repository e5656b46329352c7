"""Pipeline step: localize queries through a triangulated model (Aachen; hloc `localize_sfm`).

For each query, the matches to its retrieved database images are lifted to 2D-3D correspondences
through the model: a match whose database keypoint observes a 3D point gives (query keypoint, that
point). A query keypoint matched to several 3D points keeps each distinct one (as hloc).
With covisibility clustering, the retrieved images are split into groups that share 3D points, a
pose is estimated per group and the one with the most inliers wins (hloc's option, used for its
D2-Net numbers).

The model's 2D points must be the features file's keypoints in the same order (+0.5, COLMAP's
convention), which is how `d2_sfm.triangulate` builds it; this is checked per image.
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
from .estimation import (PoseCandidate, PoseEstimationConfig, QueryLog, QueryProblem, QueryResult, colmap_points,
                         localize_queries)
from .model import ModelIndex, covisibility_clusters, load_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelLocalizationConfig:
    estimation: PoseEstimationConfig = field(default_factory=PoseEstimationConfig)
    covisibility_clustering: bool = False  # one pose per cluster of covisible db images, best kept


class ModelLocalizer:
    """Holds the model, features and matches open while localizing many queries."""

    def __init__(self, reconstruction: pycolmap.Reconstruction, features: H5File, matches: H5File,
                 config: ModelLocalizationConfig):
        self.index = ModelIndex(reconstruction)
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

    def correspondences(self, query: str, db_names: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Unique (query keypoint index, 3D point id) rows and the db images that contributed."""
        rows, used = [], []
        for db_name in db_names:
            point3D_ids = self.db_point3D_ids(db_name)
            if point3D_ids is None:
                continue
            pairs, _ = read_matches(self.matches, query, db_name)
            lifted = point3D_ids[pairs[:, 1]]
            keep = lifted >= 0
            if keep.any():
                rows.append(np.stack([pairs[keep, 0], lifted[keep]], axis=1))
                used.append(db_name)
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), used
        unique = np.unique(np.concatenate(rows), axis=0)
        return unique[:, 0], unique[:, 1], used

    def candidate(self, query: str, keypoints: np.ndarray, db_names: list[str]) -> PoseCandidate:
        """The 2D-3D matches of the query through the model points seen by `db_names`."""
        kp_idx, point3D_ids, used = self.correspondences(query, db_names)
        result = QueryResult(query, num_correspondences=len(kp_idx), num_retrieved=len(db_names), db_used=used)
        if len(kp_idx) == 0:
            result.failure = "no match of the query reaches a 3D point of the model"
            return PoseCandidate(result, np.zeros((0, 2)), np.zeros((0, 3)))
        points3D = np.array([self.reconstruction.point3D(int(i)).xyz for i in point3D_ids])
        return PoseCandidate(result, colmap_points(keypoints[kp_idx]), points3D,
                             no_pose=f"no pose from {len(kp_idx)} 2D-3D matches")

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
         executor: ExecutorConfig | None = None) -> list[QueryResult]:
    """Localize every query of `queries` (name -> camera) against its retrieved db images.

    Queries already in `log` are not estimated again; new results are appended to it.
    """
    reconstruction = load_model(reference)
    with (open_h5(features, "features file") as features_file,
          open_h5(matches, "matches file") as matches_file):
        localizer = ModelLocalizer(reconstruction, features_file, matches_file, config)
        return localize_queries(localizer, queries, retrieval, log, executor)
