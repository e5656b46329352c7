"""Held-out validation pairs for checkpoint selection, made from photos no training pair uses.

No evaluation image is involved (graffiti, boat, iguazu, EVD and the ../shared/data/sfm scenes stay
evaluation-only): the pairs are rendered 3D pairs and homography pairs of VALIDATION_PHOTOS
(d2_sfm.training.photos), fixed by a seed. The score is the mean MMA@3 of the test-time extractor
(what users run: stride 4, hard detection, mutual NN), with ground truth at each keypoint from
depth + poses (rendered; keypoints without a depth-consistent position in view 2 are not counted)
or from the homography.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..matching import mutual_nearest_neighbours
from . import photos as photo_pool
from .homography_eval import FeatureFn
from .megadepth import warp_depth
from .rendered_pairs import RenderConfig, RenderedPairs, appearance_change, homogeneous
from .synthetic_pairs import WarpConfig, apply_homography, photometric, render, sample_views, PhotometricConfig

logger = logging.getLogger(__name__)

VALIDATION_SEED = 20240601
GroundTruth = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # xy (N, 2) -> xy in image 2, known mask


@dataclass(frozen=True, eq=False)
class ValidationPair:
    name: str
    image1: np.ndarray  # RGB uint8
    image2: np.ndarray
    ground_truth: GroundTruth


def rendered_truth(pair, tolerance: float) -> GroundTruth:
    def truth(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos2, valid = warp_depth(xy[:, ::-1].astype(np.float64), np.nan_to_num(pair.depth1, nan=0.0),
                                 pair.camera1.K, homogeneous(pair.pose1), np.zeros(2),
                                 np.nan_to_num(pair.depth2, nan=0.0), pair.camera2.K,
                                 homogeneous(pair.pose2), np.zeros(2), tolerance)
        return pos2[:, ::-1], valid
    return truth


def homography_truth(homography: np.ndarray) -> GroundTruth:
    return lambda xy: (apply_homography(homography, xy.astype(np.float64)), np.ones(len(xy), bool))


def validation_pairs(rendered: int = 12, homographies: int = 4, size: int = 256) -> list[ValidationPair]:
    """The fixed held-out set: `rendered` 3D pairs (half with a strong appearance change on view 2)
    and `homographies` homography pairs, all from VALIDATION_PHOTOS."""
    images = photo_pool.pool("validation")
    config = RenderConfig(crop_size=size)
    dataset = RenderedPairs(images, rendered, seed=VALIDATION_SEED, config=config, augment=False)
    pairs = []
    for k in range(rendered):
        pair = dataset.pair(0, k)
        image2 = pair.image2
        if k % 2:
            image2 = appearance_change(image2, np.random.default_rng([VALIDATION_SEED, k]))
        pairs.append(ValidationPair(f"rendered {k}", pair.image1, image2, rendered_truth(pair, config.depth_tolerance)))
    warp = WarpConfig(crop_size=size)
    for k in range(homographies):
        rng = np.random.default_rng([VALIDATION_SEED, 1, k])
        source = images[k % len(images)]
        source_from_1, source_from_2 = sample_views(source.shape[:2], warp, rng)
        image1 = render(source, source_from_1, size)
        image2 = photometric(render(source, source_from_2, size), PhotometricConfig(), rng)
        homography = np.linalg.inv(source_from_2) @ source_from_1
        pairs.append(ValidationPair(f"homography {k}", image1, image2, homography_truth(homography)))
    return pairs


def pair_mma3(features: FeatureFn, pair: ValidationPair, threshold: float = 3.0) -> tuple[float, int]:
    """(MMA@threshold over matches with known ground truth, number of such matches)."""
    xy0, desc0 = features(pair.image1)
    xy1, desc1 = features(pair.image2)
    if len(xy0) == 0 or len(xy1) == 0:
        return 0.0, 0
    matches0, _ = mutual_nearest_neighbours(torch.from_numpy(desc0).float(), torch.from_numpy(desc1).float())
    matches0 = matches0.numpy()
    matched = np.nonzero(matches0 >= 0)[0]
    if len(matched) == 0:
        return 0.0, 0
    expected, known = pair.ground_truth(np.asarray(xy0[matched], np.float64))
    errors = np.linalg.norm(expected[known] - xy1[matches0[matched][known]], axis=1)
    return (float(np.mean(errors <= threshold)) if len(errors) else 0.0), int(len(errors))


def evaluate(features: FeatureFn, pairs: list[ValidationPair]) -> dict[str, float]:
    """{"val_mma3": mean over pairs, "val_matches": mean matches, "val_mma3 <kind>": per kind}."""
    scores = {pair.name: pair_mma3(features, pair) for pair in pairs}
    result = {"val_mma3": float(np.mean([s for s, _ in scores.values()])),
              "val_matches": float(np.mean([n for _, n in scores.values()]))}
    for kind in ("rendered", "homography"):
        chosen = [s for name, (s, _) in scores.items() if name.startswith(kind)]
        if chosen:
            result[f"val_mma3 {kind}"] = float(np.mean(chosen))
    return result
