"""COLMAP database import (io layer): d2_sfm keypoints and matches into a pycolmap database, and
pycolmap's two-view verification of them. Used by the `colmap_db` and `triangulate` steps.

- keypoints: **+0.5** on x and y. d2_sfm's HDF5 files put the centre of the top-left pixel at
  (0, 0) (D2-Net and hloc convention), COLMAP at (0.5, 0.5);
- raw matches of every pair (descriptors are not stored, as in hloc), checked against the images'
  keypoint counts and feature ids, optionally without low-score or border matches;
- two-view geometries estimated by pycolmap (`geometric_verification`, LO-RANSAC on E, F and H);
- per-pair numbers (`PairStats`) in `<database>.pairs.json`.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .atomic import write_json
from .colmap import pycolmap
from .errors import D2SfmError, check_options
from .h5io import H5FormatError, open_h5, read_image_size, read_keypoints, read_matches, stored_feature_id

COLMAP_PIXEL_OFFSET = 0.5  # d2_sfm keypoints (top-left pixel centre at 0) -> COLMAP (at 0.5)


class DatabaseError(D2SfmError, ValueError):
    """Inputs that cannot make a COLMAP database (cameras, features, matches); names the file."""


@dataclass(frozen=True)
class VerificationConfig:
    """pycolmap's two-view verification, then d2_sfm's weak-pair rejection."""
    max_error: float = 4.0  # RANSAC threshold (px)
    max_num_trials: int = 10000  # COLMAP's default (hloc: 20000, about twice as slow for D2's low ratios)
    ransac_min_inlier_ratio: float = 0.1  # as hloc
    min_num_inliers: int = 15  # pycolmap's verified-pair minimum
    # Two passes (colmap_db): D2's mutual matches have low inlier ratios (0.15-0.7), so RANSAC on
    # E, F and H runs to max_num_trials on most pairs, and the pairs that end up rejected cost the
    # most. A first pass with first_pass_trials (a prefix of the full run: seeded, so a pair that
    # converges sooner gets the same result) settles the clear pairs; pairs it rejects with at least
    # second_pass_fraction of min_pair_inliers and of min_pair_inlier_ratio are verified again with
    # max_num_trials. Measured at 640-1024 px: on kermit the first pass found >= 0.79 of the full
    # pass's inliers on every pair the full pass keeps; kermit, sceaux, temple and the sample scene
    # kept the same pairs as one full pass, 3-4x faster (pipelines/benchmark_reconstruct.py
    # --resume-variants --variants "--first-pass-trials 0" "").
    first_pass_trials: int | None = 1000  # None: one pass with max_num_trials
    second_pass_fraction: float = 0.6
    # Weak-pair rejection, measured on kermit and temple (640 px, ~900 D2 keypoints per image): pairs
    # under 50 inliers were mostly false (their inliers disagree with the final model) or, on the
    # temple, views 90-180 degrees apart; every true temple neighbour had 90+ inliers.
    min_pair_inliers: int = 50  # fewer verified inliers -> pair removed
    min_pair_inlier_ratio: float = 0.15  # weak-pair rejection: inliers / raw matches below -> removed
    min_match_score: float | None = None  # drop raw matches scoring at or below this (None: keep all)
    border_margin: float = 8.0  # drop matches of keypoints this close to the border (px): zero padding
    # makes border responses of the dense map (2 cells at stride 4) match each other across images;
    # on the temple, 8 px removed the only false pairs (100-170 degrees apart) above 50 inliers
    random_seed: int = 0  # RANSAC seed, for repeatable runs

    def __post_init__(self) -> None:
        check_options("verification", ransac_max_error=not self.max_error > 0,
                      max_num_trials=self.max_num_trials < 1, min_num_inliers=self.min_num_inliers < 0,
                      min_pair_inliers=self.min_pair_inliers < 0,
                      min_pair_inlier_ratio=not self.min_pair_inlier_ratio >= 0,
                      border_margin=self.border_margin < 0,
                      first_pass_trials=self.first_pass_trials is not None
                      and not 1 <= self.first_pass_trials <= self.max_num_trials,
                      second_pass_fraction=not 0 <= self.second_pass_fraction <= 1)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class PairStats:
    name0: str
    name1: str
    num_matches: int
    num_inliers: int = 0
    configuration: str = "UNVERIFIED"
    kept: bool = False
    reason: str = ""
    verified_twice: bool = False  # a near miss of the first verification pass (VerificationConfig)

    @property
    def inlier_ratio(self) -> float:
        return self.num_inliers / self.num_matches if self.num_matches else 0.0

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "inlier_ratio": round(self.inlier_ratio, 4)}


def pair_stats_path(database: Path) -> Path:
    return Path(database).with_suffix(".pairs.json")


def write_pair_stats(path: Path, stats: list[PairStats]) -> None:
    write_json(path, [s.as_dict() for s in stats])


def read_pair_stats(path: Path) -> list[PairStats]:
    fields = set(PairStats.__dataclass_fields__)
    return [PairStats(**{k: v for k, v in row.items() if k in fields}) for row in json.loads(Path(path).read_text())]


def verified_graph(stats: list[PairStats]) -> dict[str, dict[str, int]]:
    """name -> {other name: verified inliers} over the kept pairs."""
    graph: dict[str, dict[str, int]] = defaultdict(dict)
    for s in stats:
        if s.kept:
            graph[s.name0][s.name1] = s.num_inliers
            graph[s.name1][s.name0] = s.num_inliers
    return graph


def import_keypoints(db: pycolmap.Database, features: Path, image_ids: dict[str, int]
                     ) -> dict[str, tuple[int, str]]:
    """Keypoints of every image, shifted by +0.5 px into COLMAP's pixel convention; returns each
    image's keypoint count and feature id (what its matches must have been made from)."""
    identities = {}
    with open_h5(features, "features file") as f:
        for name, image_id in image_ids.items():
            keypoints = read_keypoints(f, name)
            db.write_keypoints(image_id, keypoints + COLMAP_PIXEL_OFFSET)
            identities[name] = (len(keypoints), stored_feature_id(f, name))
    return identities


def border_keypoints(features: Path, names: list[str], margin: float) -> dict[str, np.ndarray]:
    """Per image, which keypoints lie within `margin` px of the image border (all False if margin <= 0)."""
    masks = {}
    with open_h5(features, "features file") as f:
        for name in names:
            keypoints = read_keypoints(f, name)
            width, height = read_image_size(f, name)
            outside = ((keypoints < -1) | (keypoints > np.array([width, height]))).any(axis=1)
            if outside.any():
                raise H5FormatError(f"{features}: {int(outside.sum())} keypoints of {name!r} lie outside its "
                                    f"{width}x{height} image, e.g. {keypoints[outside][0].tolist()}")
            masks[name] = ((keypoints[:, 0] < margin - 0.5) | (keypoints[:, 1] < margin - 0.5)
                           | (keypoints[:, 0] > width - margin - 0.5) | (keypoints[:, 1] > height - margin - 0.5)
                           if margin > 0 else np.zeros(len(keypoints), bool))
    return masks


def import_matches(db: pycolmap.Database, pairs: list[tuple[str, str]], matches: Path,
                   image_ids: dict[str, int], min_match_score: float | None,
                   identities: dict[str, tuple[int, str]],
                   excluded: dict[str, np.ndarray] | None = None) -> list[PairStats]:
    """Raw matches of every pair whose images are both in the database, checked against the
    images' keypoint counts; matches touching a keypoint marked in `excluded` (name -> mask, e.g.
    `border_keypoints`) are left out."""
    stats = []
    with open_h5(matches, "matches file") as f:
        for name0, name1 in pairs:
            (count0, id0), (count1, id1) = identities[name0], identities[name1]
            pair, scores = read_matches(f, name0, name1, (count0, count1), (id0, id1))
            if min_match_score is not None:
                pair = pair[scores > min_match_score]
            if excluded is not None:
                pair = pair[~(excluded[name0][pair[:, 0]] | excluded[name1][pair[:, 1]])]
            db.write_matches(image_ids[name0], image_ids[name1], np.ascontiguousarray(pair, np.uint32))
            stats.append(PairStats(name0, name1, len(pair)))
    return stats


def verification_options(config: VerificationConfig, max_num_trials: int | None = None
                         ) -> pycolmap.TwoViewGeometryOptions:
    options = pycolmap.TwoViewGeometryOptions()
    options.min_num_inliers = config.min_num_inliers
    options.ransac.max_error = config.max_error
    options.ransac.max_num_trials = max_num_trials or config.max_num_trials
    options.ransac.min_num_trials = min(options.ransac.min_num_trials, options.ransac.max_num_trials)
    options.ransac.min_inlier_ratio = config.ransac_min_inlier_ratio
    options.ransac.random_seed = config.random_seed
    return options


def verify(database: Path, config: VerificationConfig, num_threads: int = -1, max_num_trials: int | None = None
           ) -> None:
    """pycolmap's geometric verification of every pair that has raw matches and no two-view
    geometry yet, with `max_num_trials` RANSAC trials (default: the config's)."""
    verifier = pycolmap.GeometricVerifierOptions()
    verifier.num_threads = num_threads
    pycolmap.geometric_verification(str(database), verifier_options=verifier,
                                    two_view_geometry_options=verification_options(config, max_num_trials))
