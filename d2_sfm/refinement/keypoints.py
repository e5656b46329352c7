"""Featuremetric keypoint adjustment: every keypoint of a track moves (within a bound) until its
dense descriptor agrees with the track root's, which stays fixed; and the same alignment for
query keypoints against the descriptors of their matched database observations.

Several dense levels (e.g. conv3_3 then conv1_2) are used coarse to fine: each level starts
where the previous one stopped, with its own bound (cells of that level)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .dense import DenseMap, cut_patches, sample
from .optimize import SolverConfig, align
from .tracks import Tracks, node_image

logger = logging.getLogger(__name__)

DenseLoader = Callable[[int], list[DenseMap]]  # image index -> its dense maps, one per level


@dataclass
class KeypointAdjustment:
    keypoints: list[np.ndarray]  # per image (N_i, 2) float32, refined
    moved: np.ndarray  # (M,) displacement in original pixels of every free (non-root) node
    num_tracks: int
    dense_loads: int  # dense maps computed (images loaded twice when the cache was too small)


def patch_size(bound: float) -> int:
    """Patch side (cells) that holds a +-bound move plus the central-difference and bilinear taps."""
    return 2 * int(np.ceil(bound)) + 6


def descriptors_at(dense: DenseMap, keypoints: torch.Tensor) -> torch.Tensor:
    """Unit descriptors (N, C) float32 of a dense map at keypoints (N, 2) in original pixels."""
    if len(keypoints) == 0:
        return keypoints.new_zeros((0, dense.features.shape[0]), dtype=torch.float32)
    cells = dense.to_cells(keypoints.float().to(dense.features.device))
    patches, corner = cut_patches(dense.features, cells, 4)  # small float copies of an fp16 map
    return F.normalize(sample(patches.float(), (cells - corner)[:, None])[:, 0], dim=-1)


def align_keypoints(dense: DenseMap, keypoints: torch.Tensor, references: torch.Tensor, weights: torch.Tensor,
                    solver: SolverConfig) -> torch.Tensor:
    """Keypoints (N, 2) original pixels aligned on one dense map to references (N, C)."""
    cells = dense.to_cells(keypoints.float())
    patches, corner = cut_patches(dense.features, cells, patch_size(solver.bound))
    aligned = align(patches, cells - corner, references, weights, solver) + corner
    return dense.to_pixels(aligned)


def adjust_keypoints(keypoints: list[np.ndarray], tracks: Tracks, offsets: np.ndarray, load_dense: DenseLoader,
                     solvers: Sequence[SolverConfig], device: torch.device, cache_bytes: int = 2 << 30,
                     progress: Callable = lambda it, **_: it) -> KeypointAdjustment:
    """Keypoint adjustment of all tracks at once, one solver config per dense level.

    keypoints: per image (N_i, 2); offsets (I + 1,) their cumulative counts (global node ids).
    Pass 1 samples the roots' reference descriptors; pass 2 aligns the other nodes image by image.
    Dense maps (fp16) are kept between the passes within `cache_bytes`, otherwise recomputed."""
    refined = [np.array(k, np.float32, copy=True) for k in keypoints]
    if tracks.num_tracks == 0:
        return KeypointAdjustment(refined, np.zeros(0, np.float32), 0, 0)
    image_of = node_image(tracks.nodes, offsets)
    free = np.flatnonzero(~np.isin(tracks.nodes, tracks.root))
    root_images = node_image(tracks.root, offsets)
    free_images = set(image_of[free].tolist())
    references: list[torch.Tensor | None] = [None] * len(solvers)
    cache: dict[int, list[DenseMap]] = {}
    cached_bytes, loads = 0, 0
    for image in progress(np.unique(image_of).tolist(), desc="refine: references", unit="img"):
        maps = load_dense(image)
        loads += 1
        roots_here = np.flatnonzero(root_images == image)
        kp = torch.from_numpy(keypoints[image][tracks.root[roots_here] - offsets[image]]).to(device)
        for level, dense in enumerate(maps):
            found = descriptors_at(dense, kp)
            if references[level] is None:
                references[level] = torch.zeros((tracks.num_tracks, found.shape[1]), device=device)
            references[level][torch.from_numpy(roots_here).to(device)] = found
        size = sum(m.features.numel() * 2 for m in maps)
        if image in free_images and cached_bytes + size <= cache_bytes:
            cache[image] = [DenseMap(m.features.half(), m.scale) for m in maps]
            cached_bytes += size
        del maps

    moved = []
    for image in progress(sorted(free_images), desc="refine: align", unit="img"):
        maps = cache.pop(image, None)
        if maps is None:
            maps = load_dense(image)
            loads += 1
        free_here = free[image_of[free] == image]
        local = tracks.nodes[free_here] - offsets[image]
        track = torch.from_numpy(tracks.track[free_here]).to(device)
        kp = torch.from_numpy(keypoints[image][local]).to(device)
        weights = torch.ones(len(kp), device=device)
        for level, (dense, solver) in enumerate(zip(maps, solvers)):
            kp = align_keypoints(dense, kp, references[level][track], weights, solver)
        new = kp.cpu().numpy().astype(np.float32)
        moved.append(np.linalg.norm(new - refined[image][local], axis=1))
        refined[image][local] = new
    return KeypointAdjustment(refined, np.concatenate(moved) if moved else np.zeros(0, np.float32),
                              tracks.num_tracks, loads)


def refine_query_keypoints(query: Sequence[DenseMap], keypoints: np.ndarray, references: Sequence[torch.Tensor],
                           solvers: Sequence[SolverConfig]) -> np.ndarray:
    """Query keypoints (N, 2) (original pixels) aligned, level by level, to reference descriptors
    (N, C_level): e.g. `descriptors_at(database_map, database_keypoints)` of each correspondence's
    database observation. A keypoint matched to several observations appears once per
    correspondence; its copies move independently (pixsfm's query keypoint adjustment)."""
    if len(keypoints) == 0:
        return np.zeros((0, 2), np.float32)
    device = query[0].features.device
    kp = torch.as_tensor(np.asarray(keypoints, np.float32), device=device)
    weights = torch.ones(len(kp), device=device)
    for dense, refs, solver in zip(query, references, solvers):
        kp = align_keypoints(dense, kp, refs.to(device).float(), weights, solver)
    return kp.cpu().numpy().astype(np.float32)
