"""Epipolar filtering of tentative matches before they form tracks.

D2's raw mutual-nearest-neighbour matches hold many outliers. A wrong edge can join two tracks
or, worse, block the right merge (a track never holds two keypoints of one image), and it spoils
the local affine shapes that start the photometric alignment. A per-pair fundamental matrix
(pycolmap's LO-RANSAC, fixed seed) keeps only the epipolar-consistent matches for the tracks;
the matches file itself is untouched (geometric verification still runs on the refined keypoints).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from ..colmap import pycolmap

MIN_MATCHES = 16  # fewer: the pair keeps all its matches (too few to estimate a model reliably)


def epipolar_inliers(points0: np.ndarray, points1: np.ndarray, threshold: float,
                     confidence: float = 0.999) -> np.ndarray:
    """(N,) bool: matches points0[i] <-> points1[i] (pixels) whose Sampson error under a robustly
    fitted fundamental matrix is within `threshold` pixels; all True when none can be fitted."""
    count = len(points0)
    if count < MIN_MATCHES:
        return np.ones(count, bool)
    options = pycolmap.RANSACOptions(max_error=threshold, confidence=confidence, max_num_trials=10000,
                                     random_seed=0)
    found = pycolmap.estimate_fundamental_matrix(np.asarray(points0, np.float64), np.asarray(points1, np.float64),
                                                 options)
    if found is None:
        return np.ones(count, bool)
    return np.asarray(found["inlier_mask"], bool).reshape(count)


def epipolar_inliers_of_pairs(pairs: Sequence[tuple[np.ndarray, np.ndarray, float]], confidence: float = 0.999,
                              workers: int | None = None) -> list[np.ndarray]:
    """`epipolar_inliers` of every (points0, points1, threshold) of `pairs`, in that order, on all
    cores like COLMAP's own verification (pycolmap releases the GIL; every estimate has its own fixed
    seed, so the masks do not depend on the number of threads). The filter is most of the refine
    step's time on a few images (sample scene: 3 of 6 s on one core)."""
    workers = workers or min(len(pairs), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                             else (os.cpu_count() or 1))
    if workers <= 1:
        return [epipolar_inliers(points0, points1, threshold, confidence) for points0, points1, threshold in pairs]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda pair: epipolar_inliers(*pair, confidence), pairs))
