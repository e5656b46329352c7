"""Epipolar filtering of tentative matches before they form tracks.

D2's raw mutual-nearest-neighbour matches hold many outliers. A wrong edge can join two tracks
or, worse, block the right merge (a track never holds two keypoints of one image), and it spoils
the local affine shapes that start the photometric alignment. A per-pair fundamental matrix
(pycolmap's LO-RANSAC, fixed seed) keeps only the epipolar-consistent matches for the tracks;
the matches file itself is untouched (geometric verification still runs on the refined keypoints).
"""
from __future__ import annotations

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
