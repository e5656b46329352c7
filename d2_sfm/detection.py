"""D2-Net hard detection, edge test, sub-pixel refinement and descriptor sampling: pure functions.

Behaviour follows the official `model_test.py` (HardDetectionModule, HandcraftedLocalizationModule)
and `utils.interpolate_dense_features`, but the Hessian, edge test and Newton step are evaluated
only at candidate positions (channel-wise maximum AND 3x3 local maximum) instead of densely over
all 512 x h x w cells, which is what makes the official code slow and memory hungry.

Conventions: a dense map is (C, h, w); positions are (i=row, j=col) in feature-map cells.
Finite differences use zero padding like the official conv2d filters; the local-maximum test
treats out-of-map neighbours as -inf like max_pool2d's padding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .configs import EDGE_THRESHOLD

# 3x3 neighbourhood offsets (di, dj), row-major; index 4 is the centre.
NEIGHBOUR_OFFSETS = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)]
# Channels compared with the channel maximum at a time: bounds the (chunk, h, w) bool temporary.
CHANNEL_CHUNK = 64


def channel_maxima(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Official test 1 on a (C, h, w) map: (channel, i, j) of every cell equal to the maximum over
    channels, in nonzero() order. Ties fire in every tied channel, as in the official code."""
    channel_max = dense.max(dim=0, keepdim=True).values  # (1, h, w)
    found = []
    for start in range(0, len(dense), CHANNEL_CHUNK):
        channel, i, j = torch.nonzero(dense[start:start + CHANNEL_CHUNK] == channel_max, as_tuple=True)
        found.append((channel + start, i, j))
    channel, i, j = (torch.cat(parts) for parts in zip(*found))
    return channel, i, j


def neighbourhoods(dense: torch.Tensor, channel: torch.Tensor, i: torch.Tensor, j: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """3x3 values around each (channel, i, j): (K, 9) with 0 outside the map, and (K, 9) inside."""
    _, height, width = dense.shape
    offsets = torch.tensor(NEIGHBOUR_OFFSETS, device=dense.device)  # (9, 2)
    ii = i[:, None] + offsets[:, 0]
    jj = j[:, None] + offsets[:, 1]
    inside = (ii >= 0) & (ii < height) & (jj >= 0) & (jj < width)
    flat = (channel[:, None] * height + ii.clamp_(0, height - 1)) * width + jj.clamp_(0, width - 1)
    return torch.take(dense, flat).masked_fill_(~inside, 0.0), inside


def is_local_maximum(values: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """Official test 2 from (K, 9) neighbourhoods: centre >= all neighbours (outside: -inf)."""
    return values[:, 4] >= values.masked_fill(~inside, float("-inf")).max(dim=1).values


def derivatives(neighbours: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradient and Hessian from a (K, 9) zero-padded neighbourhood (official filters)."""
    n = neighbours
    return {
        "di": 0.5 * (n[:, 7] - n[:, 1]),
        "dj": 0.5 * (n[:, 5] - n[:, 3]),
        "dii": n[:, 1] - 2 * n[:, 4] + n[:, 7],
        "djj": n[:, 3] - 2 * n[:, 4] + n[:, 5],
        "dij": 0.25 * (n[:, 0] - n[:, 2] - n[:, 6] + n[:, 8]),
    }


def is_not_edge(d: dict[str, torch.Tensor], threshold: float = EDGE_THRESHOLD) -> torch.Tensor:
    """SIFT's edge test on the 2x2 Hessian: tr^2/det <= (t+1)^2/t and det > 0."""
    det = d["dii"] * d["djj"] - d["dij"] ** 2
    trace = d["dii"] + d["djj"]
    return (trace * trace / det <= (threshold + 1) ** 2 / threshold) & (det > 0)


def newton_step(d: dict[str, torch.Tensor]) -> torch.Tensor:
    """One Newton step -H^-1 g towards the quadratic's extremum: (K, 2) as (step_i, step_j)."""
    det = d["dii"] * d["djj"] - d["dij"] ** 2
    step_i = -(d["djj"] * d["di"] - d["dij"] * d["dj"]) / det
    step_j = -(-d["dij"] * d["di"] + d["dii"] * d["dj"]) / det
    return torch.stack([step_i, step_j], dim=1)


@dataclass(frozen=True)
class Detections:
    """Detections of one map: cell, channel and refined position (i, j) in feature-map cells."""
    channel: torch.Tensor  # (K,) long
    cell: torch.Tensor  # (K, 2) long, integer (i, j)
    position: torch.Tensor  # (K, 2) float, refined (i, j)

    def select(self, mask: torch.Tensor) -> "Detections":
        return Detections(self.channel[mask], self.cell[mask], self.position[mask])


def detect(dense: torch.Tensor, edge_threshold: float = EDGE_THRESHOLD) -> Detections:
    """Hard detection + refinement on a (C, h, w) map (all candidates passing the three tests).

    `position` is only meaningful where |step| < 0.5 (see `keep_refined`).
    """
    channel, i, j = channel_maxima(dense)
    values, inside = neighbourhoods(dense, channel, i, j)  # one gather for tests 2, 3 and the step
    keep = is_local_maximum(values, inside)
    d = derivatives(values[keep])
    not_edge = is_not_edge(d, edge_threshold)
    channel, cell = channel[keep][not_edge], torch.stack([i[keep], j[keep]], dim=1)[not_edge]
    step = newton_step({k: v[not_edge] for k, v in d.items()})
    return Detections(channel, cell, cell.to(dense.dtype) + step)


def keep_refined(detections: Detections) -> torch.Tensor:
    """Official filter: keep a detection only if both Newton offsets are below half a cell."""
    step = detections.position - detections.cell.to(detections.position.dtype)
    return (step.abs() < 0.5).all(dim=1)


def sample_descriptors(dense: torch.Tensor, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear descriptors at sub-cell positions (K, 2) (i, j) of a (C, h, w) map.

    Returns (descriptors (K', C) L2-normalised, valid (K,) bool). A position is invalid when any
    of its floor/ceil corners leaves the map (official rule).
    """
    _, height, width = dense.shape
    i, j = position[:, 0], position[:, 1]
    i0, j0 = i.floor(), j.floor()
    i1, j1 = i.ceil(), j.ceil()
    valid = (i0 >= 0) & (j0 >= 0) & (i1 < height) & (j1 < width)
    i, j, i0, j0, i1, j1 = (t[valid] for t in (i, j, i0, j0, i1, j1))
    wi, wj = (i - i0)[:, None], (j - j0)[:, None]
    i0, j0, i1, j1 = (t.long() for t in (i0, j0, i1, j1))
    descriptors = ((1 - wi) * (1 - wj) * dense[:, i0, j0].T + (1 - wi) * wj * dense[:, i0, j1].T
                   + wi * (1 - wj) * dense[:, i1, j0].T + wi * wj * dense[:, i1, j1].T)
    return F.normalize(descriptors, dim=1), valid
