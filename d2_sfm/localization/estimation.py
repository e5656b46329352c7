"""Absolute pose of a query from 2D-3D matches (pycolmap), per-query results and the results file.

Shared by `pose_from_model` (Aachen) and `pose_from_cutouts` (InLoc). 2D points given to
`estimate_pose` are in COLMAP's pixel convention (centre of the top-left pixel = (0.5, 0.5)), the
convention of the pycolmap camera; `colmap_points` converts HDF5 keypoints (integer = centre).

Results file (the visual localization benchmark's format, as hloc writes it): one line per query,
`name qw qx qy qz tx ty tz`, the rotation quaternion (w first) and translation of cam_from_world;
`name` is the image's basename.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from ..atomic import write_text
from ..colmap import pycolmap
from ..datasets.formats import qt_from_rigid, rigid_from_qt
from ..executors import ExecutorConfig, map_unordered

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoseEstimationConfig:
    ransac_max_error: float = 12.0  # px in the query image (hloc: 12 localize_sfm, 48 localize_inloc)
    max_num_trials: int = 10000  # RANSAC iterations at most (pycolmap default)
    min_num_inliers: int = 6  # fewer inliers count as a failure
    random_seed: int = 0  # fixed seed: the same inputs give the same pose
    refine_focal_length: bool = False  # query intrinsics are known: keep them
    refine_extra_params: bool = False

    def with_threshold(self, ransac_max_error: float) -> "PoseEstimationConfig":
        return PoseEstimationConfig(**{**asdict(self), "ransac_max_error": float(ransac_max_error)})


@dataclass
class PoseEstimate:
    cam_from_world: pycolmap.Rigid3d
    num_inliers: int
    inlier_mask: np.ndarray  # (M,) bool over the given correspondences


def colmap_points(keypoints: np.ndarray) -> np.ndarray:
    """HDF5 keypoints (integer = pixel centre) -> COLMAP pixel coordinates (+0.5), float64."""
    return np.asarray(keypoints, np.float64).reshape(-1, 2) + 0.5


def estimate_pose(points2D: np.ndarray, points3D: np.ndarray, camera: pycolmap.Camera,
                  config: PoseEstimationConfig = PoseEstimationConfig()) -> PoseEstimate | None:
    """LO-RANSAC P3P + non-linear refinement with the camera's intrinsics held fixed.

    points2D (M, 2) in COLMAP pixels, points3D (M, 3) in world coordinates.
    Returns None when pycolmap finds no pose or fewer than `min_num_inliers` inliers.
    """
    points2D = np.ascontiguousarray(points2D, np.float64).reshape(-1, 2)
    points3D = np.ascontiguousarray(points3D, np.float64).reshape(-1, 3)
    if len(points2D) != len(points3D):
        raise ValueError(f"{len(points2D)} 2D points but {len(points3D)} 3D points")
    if len(points2D) < max(4, config.min_num_inliers):
        return None
    estimation = pycolmap.AbsolutePoseEstimationOptions()
    estimation.ransac.max_error = config.ransac_max_error
    estimation.ransac.max_num_trials = config.max_num_trials
    estimation.ransac.random_seed = config.random_seed
    refinement = pycolmap.AbsolutePoseRefinementOptions()
    refinement.refine_focal_length = config.refine_focal_length
    refinement.refine_extra_params = config.refine_extra_params
    answer = pycolmap.estimate_and_refine_absolute_pose(points2D, points3D, camera, estimation, refinement)
    if answer is None or answer["num_inliers"] < config.min_num_inliers:
        return None
    return PoseEstimate(answer["cam_from_world"], int(answer["num_inliers"]),
                        np.asarray(answer["inlier_mask"], bool).ravel())


@dataclass
class QueryResult:
    """What the pose step found for one query; `cam_from_world` is None on failure."""

    name: str  # image name relative to the dataset's image folder
    cam_from_world: pycolmap.Rigid3d | None = None
    num_inliers: int = 0
    num_correspondences: int = 0  # 2D-3D matches given to RANSAC
    num_retrieved: int = 0
    db_used: list[str] = field(default_factory=list)  # retrieved images that gave correspondences
    failure: str | None = None  # why there is no pose
    seconds: float = 0.0
    skipped_db: dict[str, str] = field(default_factory=dict)  # retrieved images left out, and why

    @property
    def success(self) -> bool:
        return self.cam_from_world is not None

    def to_json(self) -> dict[str, Any]:
        pose = None
        if self.cam_from_world is not None:
            qvec, tvec = qt_from_rigid(self.cam_from_world)
            pose = {"qvec_wxyz": qvec.tolist(), "tvec": tvec.tolist()}
        return {"name": self.name, "cam_from_world": pose, "num_inliers": self.num_inliers,
                "num_correspondences": self.num_correspondences, "num_retrieved": self.num_retrieved,
                "db_used": self.db_used, "failure": self.failure, "seconds": round(self.seconds, 4),
                "skipped_db": self.skipped_db}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "QueryResult":
        pose = data.get("cam_from_world")
        return cls(data["name"], pose and rigid_from_qt(pose["qvec_wxyz"], pose["tvec"]),
                   data["num_inliers"], data["num_correspondences"], data["num_retrieved"],
                   list(data["db_used"]), data["failure"], data["seconds"], dict(data.get("skipped_db") or {}))


def results_name(name: str) -> str:
    """The name the benchmark expects: the image's basename (like hloc)."""
    return PurePosixPath(name).name


class Timer:
    """Wall-clock seconds per named step, for summary.json."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, step: str):
        timer = self

        class _Step:
            def __enter__(self):
                self.start = time.time()

            def __exit__(self, *exc):
                timer.seconds[step] = round(timer.seconds.get(step, 0.0) + time.time() - self.start, 3)

        return _Step()


class QueryLog:
    """Per-query results appended to a JSON-lines file, so that an interrupted pose step resumes.

    The first line holds the settings; a log written with other settings is discarded. Each
    result line also records `inputs`, the fingerprint of what that query was computed from (its
    image, intrinsics, retrieval list, the 3D it used): a result whose inputs changed since is
    not reused, so a resume redoes exactly the changed queries.
    """

    def __init__(self, path: Path, settings: dict[str, Any], inputs: dict[str, str] | None = None):
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings, default=str))
        self.inputs = dict(inputs or {})
        self.changed: list[str] = []  # queries whose logged result is stale
        self.done, clean = self._read()
        if not clean:
            self._rewrite(list(self.done.values()))
        if self.changed:
            logger.info("%d queries changed since %s was written (image, intrinsics, retrieval or 3D): "
                        "localizing them again, e.g. %s", len(self.changed), self.path, self.changed[0])

    def _rewrite(self, results: list[QueryResult]) -> None:
        """The header and `results`, atomically (a kill leaves the old or the new log)."""
        lines = [json.dumps({"settings": self.settings})] + [self._line(r) for r in results]
        write_text(self.path, "\n".join(lines) + "\n")

    def _line(self, result: QueryResult) -> str:
        return json.dumps({**result.to_json(), "inputs": self.inputs.get(result.name)})

    def _read(self) -> tuple[dict[str, QueryResult], bool]:
        """(reusable results, whether the file is exactly header + those results)."""
        if not self.path.exists():
            return {}, False
        text = self.path.read_bytes().decode("utf-8", errors="replace")
        lines = text.splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            header = {}
        if not isinstance(header, dict) or header.get("settings") != self.settings:
            if lines:
                logger.info("Settings changed since %s was written: estimating all poses again", self.path)
            return {}, False
        done: dict[str, QueryResult] = {}
        for number, line in enumerate(lines[1:], start=2):
            try:
                data = json.loads(line)
                result = QueryResult.from_json(data)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                # a line cut by a crash ends the usable part of the log
                logger.warning("Ignoring the damaged end of %s (from line %d)", self.path, number)
                return done, False
            if data.get("inputs") != self.inputs.get(result.name):
                self.changed.append(result.name)
                continue
            done[result.name] = result
        return done, not self.changed and text.endswith("\n")

    def add(self, result: QueryResult) -> None:
        self.done[result.name] = result
        with open(self.path, "a") as f:
            f.write(self._line(result) + "\n")


@dataclass
class PoseCandidate:
    """One pose to estimate for a query: its 2D-3D matches (from some of its retrieved images) and
    the result so far (counts, images used; `failure` set when there is nothing to estimate)."""

    result: QueryResult
    points2D: np.ndarray  # (M, 2) COLMAP pixels
    points3D: np.ndarray  # (M, 3) world
    no_pose: str = ""  # the failure when RANSAC finds no pose


@dataclass
class QueryProblem:
    """Everything the pose of one query needs, read on the driver: estimated wherever it is sent
    (this process or a Ray worker), without files."""

    camera: pycolmap.Camera
    config: PoseEstimationConfig
    candidates: list[PoseCandidate]  # the best (most inliers, first on ties) is the answer
    num_retrieved: int
    read_seconds: float = 0.0  # spent reading the correspondences


def solve_query(problem: QueryProblem) -> QueryResult:
    """The pose of each candidate (LO-RANSAC + refinement) and the best of them."""
    start = time.time()
    best = None
    for candidate in problem.candidates:
        result = candidate.result
        if result.failure is None:
            estimate = estimate_pose(candidate.points2D, candidate.points3D, problem.camera, problem.config)
            if estimate is None:
                result.failure = candidate.no_pose
            else:
                result.cam_from_world = estimate.cam_from_world
                result.num_inliers = estimate.num_inliers
        if best is None or result.num_inliers > best.num_inliers:
            best = result
    best.num_retrieved = problem.num_retrieved
    best.seconds = problem.read_seconds + time.time() - start
    return best


class KeypointRefiner(Protocol):
    """Query keypoint adjustment (e.g. `query_refinement.QueryRefiner`): refined query keypoints
    (M, 2) for query keypoints (M, 2) and, per row, the database image and keypoint (M, 2) of
    the observation it is matched to; keypoints in HDF5 pixels (integer = pixel centre)."""

    def __call__(self, query: str, query_keypoints: np.ndarray, db_names: list[str],
                 db_keypoints: np.ndarray) -> np.ndarray: ...


class QueryLocalizer(Protocol):
    def problem(self, name: str, camera: pycolmap.Camera, retrieved: list[str]) -> QueryProblem: ...


def localize_queries(localizer: QueryLocalizer, queries: dict[str, pycolmap.Camera],
                     retrieval: dict[str, list[str]], log: QueryLog | None = None,
                     executor: ExecutorConfig | None = None) -> list[QueryResult]:
    """Localize every query (name -> camera) against its retrieved images; queries already in
    `log` are not estimated again and new results are appended to it (resumable).

    The correspondences are read here, one query at a time; the poses are estimated by `executor`
    (default: this process, in order; Ray: in parallel, logged as they finish). The results come
    back in the order of `queries` either way."""
    done = dict(log.done) if log else {}
    todo = [name for name in queries if name not in done]
    problems = (localizer.problem(name, queries[name], retrieval.get(name, [])) for name in todo)
    executor = replace(executor or ExecutorConfig(), ray_gpus_per_task=0.0)  # RANSAC needs no GPU
    for result in tqdm(map_unordered(executor, solve_query, problems), total=len(todo), desc="localize",
                       unit="query"):
        if not retrieval.get(result.name):
            result.failure = "no retrieved database image"
        if log:
            log.add(result)
        done[result.name] = result
    return [done[name] for name in queries]
