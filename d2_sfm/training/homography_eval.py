"""Mean matching accuracy (MMA) on image pairs with ground-truth homographies.

As in D2-Net's HPatches notebook: mutual-nearest-neighbour matches of L2-normalised descriptors;
a match is correct at threshold t when |H x0 - x1| <= t pixels (H maps image 1 -> image 2,
keypoints x right, y down; no half-pixel shift is applied to either side, like the notebook).

Folder layout understood (../shared/data/homography, see its README):
  hpatches_v_graffiti/{1..6}.ppm + H_1_k;  oxford_boat|kaze_iguazu/img{1..6}.pgm + H1to{k}p;
  evd/1/NAME.png, evd/2/NAME.png + evd/h/NAME.txt.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..images import read_image
from ..matching import mutual_nearest_neighbours

THRESHOLDS = tuple(range(1, 11))
# Pairs on which D2-style features should work (the rest are stress cases, see the data README).
PASS_FAIL_PAIRS = ("graffiti 1-2", "graffiti 1-3", "boat 1-2", "iguazu 1-3", "iguazu 1-6")
SEQUENCES = {  # folder -> (short name, image name pattern, homography name pattern)
    "hpatches_v_graffiti": ("graffiti", "{}.ppm", "H_1_{}"),
    "oxford_boat": ("boat", "img{}.pgm", "H1to{}p"),
    "kaze_iguazu": ("iguazu", "img{}.pgm", "H1to{}p"),
}

FeatureFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # RGB uint8 -> (xy (N,2), desc (N,D))


@dataclass(frozen=True)
class HomographyPair:
    name: str  # e.g. "graffiti 1-3", "evd adam"
    path1: Path
    path2: Path
    homography: np.ndarray  # 3x3, image 1 -> image 2


@dataclass(frozen=True)
class PairResult:
    name: str
    keypoints: tuple[int, int]
    matches: int
    mma: tuple[float, ...]  # one per THRESHOLDS entry


def list_pairs(root: Path) -> list[HomographyPair]:
    """All pairs found below root (missing folders are skipped)."""
    root = Path(root)
    pairs = []
    for folder, (short, image_pattern, h_pattern) in SEQUENCES.items():
        for k in range(2, 7):
            h_path = root / folder / h_pattern.format(k)
            if h_path.is_file():
                pairs.append(HomographyPair(f"{short} 1-{k}", root / folder / image_pattern.format(1),
                                            root / folder / image_pattern.format(k), np.loadtxt(h_path)))
    for h_path in sorted((root / "evd" / "h").glob("*.txt")):
        name = h_path.stem
        pairs.append(HomographyPair(f"evd {name}", root / "evd" / "1" / f"{name}.png",
                                    root / "evd" / "2" / f"{name}.png", np.loadtxt(h_path)))
    return pairs


def project(homography: np.ndarray, xy: np.ndarray) -> np.ndarray:
    points = np.concatenate([xy, np.ones((len(xy), 1))], axis=1) @ homography.T
    return points[:, :2] / points[:, 2:]


def match_errors(xy0: np.ndarray, desc0: np.ndarray, xy1: np.ndarray, desc1: np.ndarray,
                 homography: np.ndarray) -> np.ndarray:
    """Reprojection error (M,) in image-2 pixels of every mutual-NN match."""
    if len(xy0) == 0 or len(xy1) == 0:
        return np.zeros(0)
    matches0, _ = mutual_nearest_neighbours(torch.from_numpy(desc0).float(), torch.from_numpy(desc1).float())
    matches0 = matches0.numpy()
    matched = np.nonzero(matches0 >= 0)[0]
    return np.linalg.norm(project(homography, xy0[matched]) - xy1[matches0[matched]], axis=1)


def mma(errors: np.ndarray, thresholds: tuple[int, ...] = THRESHOLDS) -> tuple[float, ...]:
    """Share of matches with error <= t for each t (0 when there is no match, as the notebook's inf)."""
    if len(errors) == 0:
        return tuple(0.0 for _ in thresholds)
    return tuple(float(np.mean(errors <= t)) for t in thresholds)


def evaluate(features: FeatureFn, pairs: list[HomographyPair]) -> list[PairResult]:
    """Extract each distinct image once and score every pair."""
    cache: dict[Path, tuple[np.ndarray, np.ndarray]] = {}

    def get(path: Path) -> tuple[np.ndarray, np.ndarray]:
        if path not in cache:
            cache[path] = features(read_image(path))
        return cache[path]

    results = []
    for pair in pairs:
        (xy0, desc0), (xy1, desc1) = get(pair.path1), get(pair.path2)
        errors = match_errors(xy0, desc0, xy1, desc1, pair.homography)
        results.append(PairResult(pair.name, (len(xy0), len(xy1)), len(errors), mma(errors)))
    return results


def d2_features(extractor) -> FeatureFn:
    """Adapter for a d2_sfm.extractor.D2Extractor."""
    def run(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features = extractor.extract_array(image)
        return features.keypoints, features.descriptors
    return run


def sift_features(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV SIFT (default settings) on the grey image; descriptors L2-normalised for the same matcher."""
    import cv2

    sift = cv2.SIFT_create()
    keypoints, descriptors = sift.detectAndCompute(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), None)
    if descriptors is None:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32)
    xy = np.array([k.pt for k in keypoints], np.float32)
    descriptors = descriptors / np.maximum(np.linalg.norm(descriptors, axis=1, keepdims=True), 1e-12)
    return xy, descriptors.astype(np.float32)
