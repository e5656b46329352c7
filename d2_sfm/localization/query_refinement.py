"""Query keypoint adjustment before PnP (Pixel-Perfect SfM's query KA, `--refine keypoints`).

Every 2D-3D correspondence pairs a query keypoint with one database observation (the database
keypoint whose match brought the 3D point). The query keypoint is aligned, within the refine
step's bounds, to what that observation sees, by the refine step's method: `patches` (affine
Lucas-Kanade of the database patch into the query, the warp started from the epipolar-consistent
correspondences with the same database image) or `features` (dense D2 backbone descriptors). A query keypoint in
several correspondences moves once per correspondence, each copy on its own. The pose steps call
a `QueryRefiner` as a plain function of keypoints and never see how it aligns.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..configs import RefineConfig
from ..images import read_image
from ..paths import resolve_inside
from ..refinement import (DenseMap, backbone, dense_maps, descriptors_at, prepare_image, refine_pair_keypoints,
                          refine_query_keypoints, to_original, to_working, working_image)
from ..weights import load_model

logger = logging.getLogger(__name__)

Prepared = tuple[object, np.ndarray]  # an image as its method needs it, and working / original size (x, y)


class QueryRefiner:
    """Aligns query keypoints to their database observations; prepared database images are kept
    between queries within the config's cache budget (retrieved images repeat across queries)."""

    def __init__(self, image_dir: Path, config: RefineConfig, device: torch.device,
                 model: torch.nn.Module | None = None):
        self.image_dir = Path(image_dir)
        self.config = config
        self.device = device
        self.network = backbone(model, config.layers) if config.method == "features" else None
        self.cache: OrderedDict[str, tuple[Prepared, int]] = OrderedDict()
        self.cached_bytes = 0
        self.seconds = 0.0  # spent refining, over all queries
        self.shifts: list[np.ndarray] = []  # px moved per correspondence, for the log

    @classmethod
    def for_run(cls, image_dir: Path, config: RefineConfig, model: torch.nn.Module, device: torch.device
                ) -> "QueryRefiner":
        """Method features: the run's own D2 model (the features' weights), or the config's weights."""
        if config.method == "features" and config.weights:
            model, _ = load_model(config.weights, device=device)
        return cls(image_dir, config, device, model)

    def prepare(self, name: str) -> Prepared:
        """One image (name relative to the image folder) resized as configured, then as the method needs."""
        rgb = read_image(resolve_inside(self.image_dir, name))
        small, scale = working_image(rgb, self.config.max_edge, self.config.max_sum_edges)
        if self.network is not None:
            original_size = (rgb.shape[1], rgb.shape[0])
            return [DenseMap(m.features.half(), m.scale)
                    for m in dense_maps(self.network, self.config.layers, small, original_size)], scale
        return prepare_image(small, self.config.patch.blur, self.device, self.config.patch.colour), scale

    def database(self, name: str) -> Prepared:
        entry = self.cache.pop(name, None)
        if entry is None:
            prepared = self.prepare(name)
            tensors = prepared[0] if isinstance(prepared[0], list) else [prepared[0]]
            size = sum((t.features if isinstance(t, DenseMap) else t).nbytes for t in tensors)
            entry = (prepared, size)
            self.cached_bytes += size
        self.cache[name] = entry  # most recently used last
        while self.cached_bytes > (self.config.cache_mb << 20) and len(self.cache) > 1:
            _, (_, size) = self.cache.popitem(last=False)
            self.cached_bytes -= size
        return entry[0]

    def __call__(self, query: str, query_keypoints: np.ndarray, db_names: Sequence[str],
                 db_keypoints: np.ndarray) -> np.ndarray:
        """Refined query keypoints (M, 2), original pixels (integer = pixel centre), one row per
        correspondence: query_keypoints (M, 2), its database image names (M,) and keypoints (M, 2)."""
        query_keypoints = np.asarray(query_keypoints, np.float32).reshape(-1, 2)
        if len(query_keypoints) == 0:
            return np.zeros((0, 2), np.float32)
        start = time.time()
        names = np.asarray(db_names)
        groups = {name: np.flatnonzero(names == name) for name in dict.fromkeys(names.tolist())}
        target, scale = self.prepare(query)
        align = self.align_features if self.network is not None else self.align_patches
        refined = align(target, scale, query_keypoints, groups, np.asarray(db_keypoints, np.float32))
        self.shifts.append(np.linalg.norm(refined - query_keypoints, axis=1))
        self.seconds += time.time() - start
        return refined

    def align_features(self, query_maps: list[DenseMap], scale: np.ndarray, keypoints: np.ndarray,
                       groups: dict[str, np.ndarray], db_keypoints: np.ndarray) -> np.ndarray:
        """Each row to the dense descriptors (one per level) at its database keypoint."""
        references: list[torch.Tensor | None] = [None] * len(self.config.layers)
        for name, rows in groups.items():
            points = torch.from_numpy(db_keypoints[rows]).to(self.device)
            index = torch.from_numpy(rows).to(self.device)
            for level, dense in enumerate(self.database(name)[0]):
                found = descriptors_at(dense, points)  # (R, C_level)
                if references[level] is None:
                    references[level] = found.new_zeros((len(keypoints), found.shape[1]))
                references[level][index] = found
        return refine_query_keypoints(query_maps, keypoints, references, self.config.solvers())

    def align_patches(self, query_image: torch.Tensor, scale: np.ndarray, keypoints: np.ndarray,
                      groups: dict[str, np.ndarray], db_keypoints: np.ndarray) -> np.ndarray:
        """Each row to the patch around its database keypoint, one database image at a time."""
        refined = keypoints.copy()
        for name, rows in groups.items():
            db_image, db_scale = self.database(name)
            aligned = refine_pair_keypoints(db_image, query_image, to_working(db_keypoints[rows], db_scale),
                                            to_working(keypoints[rows], scale), self.config.patch,
                                            self.config.affine, self.config.epipolar_threshold)
            refined[rows] = to_original(aligned, scale)
        return refined

    def log(self) -> None:
        shifts = np.concatenate(self.shifts) if self.shifts else np.zeros(0)
        if len(shifts):
            logger.info("Query keypoint refinement (%s): %d correspondences aligned (median shift %.2f px, max "
                        "%.2f px) in %.1f s", self.config.method, len(shifts), np.median(shifts), shifts.max(),
                        self.seconds)
