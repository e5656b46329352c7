"""A triangulated model seen from the localization steps: loading, per-image 3D point ids, and
covisibility clusters of database images."""
from __future__ import annotations

from collections import defaultdict
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..colmap import pycolmap
from ..colmap_model import read_model
from . import LocalizationError


def load_model(reference: Path | pycolmap.Reconstruction) -> pycolmap.Reconstruction:
    return read_model(reference, LocalizationError)


class ModelIndex:
    """Name lookup and per-image 3D point ids of a reconstruction, computed once per image."""

    def __init__(self, reconstruction: pycolmap.Reconstruction):
        self.reconstruction = reconstruction
        self.image_ids = {image.name: image_id for image_id, image in reconstruction.images.items()}
        self.point3D_ids = lru_cache(maxsize=None)(self._point3D_ids)

    def _point3D_ids(self, image_id: int) -> np.ndarray:
        """(num_points2D,) int64: the 3D point of each 2D point, -1 where there is none."""
        image = self.reconstruction.image(image_id)
        ids = np.full(image.num_points2D(), -1, np.int64)
        points2D = image.points2D
        for index in image.get_observation_point2D_idxs():
            ids[index] = points2D[index].point3D_id
        return ids


def covisibility_clusters(index: ModelIndex, image_ids: list[int]) -> list[list[int]]:
    """Connected components of `image_ids` linked by shared 3D points, largest first (hloc)."""
    observers: dict[int, set[int]] = defaultdict(set)
    for image_id in image_ids:
        for point3D_id in np.unique(index.point3D_ids(image_id)):
            if point3D_id >= 0:
                observers[int(point3D_id)].add(image_id)
    neighbours: dict[int, set[int]] = defaultdict(set)
    for group in observers.values():
        for image_id in group:
            neighbours[image_id] |= group
    clusters, seen = [], set()
    for start in image_ids:  # retrieval order: ties keep the better-ranked cluster first
        if start in seen:
            continue
        cluster, stack = [], [start]
        seen.add(start)
        while stack:
            current = stack.pop()
            cluster.append(current)
            for other in sorted(neighbours[current] - seen):
                seen.add(other)
                stack.append(other)
        clusters.append(cluster)
    return sorted(clusters, key=len, reverse=True)
