"""Which images to pair, as pure functions shared by the steps: the most similar images by a
global descriptor (`d2_sfm.pairs` retrieval, localize's query retrieval) and the most covisible
images by shared 3D points (localize's database pairs, hloc `pairs_from_covisibility`).

Ties are always broken by image order (stable sorts), so the pairs never depend on float noise
in the order of equal scores.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse

if TYPE_CHECKING:
    from .colmap import pycolmap


def most_similar(similarity: np.ndarray, k: int) -> np.ndarray:
    """(N, min(k, M)) column indices of each row's k largest similarities (N, M), largest first,
    ties by column order."""
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


@dataclass(frozen=True, eq=False)
class Observations:
    """Which image sees which 3D point: M observations as two aligned index arrays."""

    image_names: list[str]
    image_index: np.ndarray  # (M,) int, index into image_names
    point_index: np.ndarray  # (M,) int, any point numbering

    @classmethod
    def from_reconstruction(cls, reconstruction: pycolmap.Reconstruction) -> Observations:
        """The track elements of the registered images (in image id order) of a COLMAP model."""
        ids = sorted(reconstruction.reg_image_ids())
        position = {image_id: i for i, image_id in enumerate(ids)}
        images, points = [], []
        for point3D_id, point in reconstruction.points3D.items():
            for element in point.track.elements:
                if element.image_id in position:
                    images.append(position[element.image_id])
                    points.append(point3D_id)
        return cls([reconstruction.image(i).name for i in ids], np.array(images, np.int64),
                   np.array(points, np.int64))

    def __len__(self) -> int:
        return len(self.image_index)


def covisibility_pairs(observations: Observations, num_matched: int) -> list[tuple[str, str]]:
    """(name, name) pairs: each image with the `num_matched` images sharing most 3D points (only
    those sharing at least one; ties: the earlier image first), like hloc `pairs_from_covisibility`.

    The image x image counts are a sparse product: Aachen has 4,328 database images and InLoc-size
    sets would not fit a dense matrix."""
    if len(observations) == 0:
        return []
    _, points = np.unique(observations.point_index, return_inverse=True)
    names = observations.image_names
    incidence = scipy.sparse.csr_matrix(
        (np.ones(len(points), np.float64), (points.ravel(), observations.image_index)),
        shape=(int(points.max()) + 1, len(names)))
    incidence.data[:] = 1  # a point observed twice in one image counts once
    counts = (incidence.T @ incidence).tocsr()
    pairs = []
    for i, name in enumerate(names):
        row = slice(counts.indptr[i], counts.indptr[i + 1])
        others, shared = counts.indices[row], counts.data[row]
        keep = (others != i) & (shared > 0)
        others, shared = others[keep], shared[keep]
        order = np.lexsort((others, -shared))[:num_matched]  # most shared first, ties by image order
        pairs += [(name, names[j]) for j in others[order]]
    return pairs
