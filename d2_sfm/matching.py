"""Mutual-nearest-neighbour matching of L2-normalised descriptors (hloc's NN-mutual semantics).

Distances are squared L2 between unit vectors, 2 - 2 cos. Large sets are processed in chunks of
rows so that 20k x 20k keypoints never materialise a full similarity matrix.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MatcherConfig:
    ratio_threshold: float | None = None  # Lowe's ratio on L2 distances (None: off, as hloc's D2 setting)
    distance_threshold: float | None = None  # max L2 distance (None: off)
    mutual_check: bool = True
    chunk_size: int = 4096  # rows of descriptors0 per similarity block


def nearest_neighbours(desc0: torch.Tensor, desc1: torch.Tensor, config: MatcherConfig
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of desc0 (N0, D): index into desc1 (N1, D) or -1, and similarity (N0,)."""
    k = 2 if config.ratio_threshold is not None and len(desc1) > 1 else 1
    indices, similarities = [], []
    for start in range(0, len(desc0), config.chunk_size):
        sim = desc0[start:start + config.chunk_size] @ desc1.T  # (chunk, N1)
        top_sim, top_idx = sim.topk(k, dim=1)
        dist = (2 - 2 * top_sim).clamp(min=0)  # squared L2
        keep = torch.ones(len(sim), dtype=torch.bool, device=sim.device)
        if k == 2:
            keep &= dist[:, 0] <= config.ratio_threshold ** 2 * dist[:, 1]
        if config.distance_threshold is not None:
            keep &= dist[:, 0] <= config.distance_threshold ** 2
        indices.append(torch.where(keep, top_idx[:, 0], -1))
        similarities.append(top_sim[:, 0])
    return torch.cat(indices), torch.cat(similarities)


def mutual_nearest_single_pass(desc0: torch.Tensor, desc1: torch.Tensor, config: MatcherConfig
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mutual NN from one similarity matrix, as hloc (one einsum for both directions), made in
    chunks: each (chunk, N1) block gives its rows' nearest neighbours and updates the running
    column maxima, so the N1 x N0 product is never computed a second time.

    i -> j is mutual when sim[i, j] is both its row's and its column's maximum; if several rows
    tie for one column's maximum, the first row keeps the match. No ratio test (needs two columns'
    best). Returns matches0 (N0,) (-1: none) and the row-best similarity (N0,).
    """
    col_max = torch.full((len(desc1),), float("-inf"), dtype=desc0.dtype, device=desc0.device)
    best_sim, best_idx = [], []
    for start in range(0, len(desc0), config.chunk_size):
        sim = desc0[start:start + config.chunk_size] @ desc1.T  # (chunk, N1)
        top_sim, top_idx = sim.max(dim=1)
        torch.maximum(col_max, sim.amax(dim=0), out=col_max)
        best_sim.append(top_sim)
        best_idx.append(top_idx)
    sim0, nn0 = torch.cat(best_sim), torch.cat(best_idx)
    keep = sim0 >= col_max[nn0]
    if config.distance_threshold is not None:
        keep &= (2 - 2 * sim0).clamp(min=0) <= config.distance_threshold ** 2
    rows = torch.arange(len(desc0), device=desc0.device)
    first = torch.full_like(col_max, len(desc0), dtype=torch.long).scatter_reduce_(
        0, nn0[keep], rows[keep], reduce="amin")
    keep &= first[nn0] == rows
    return torch.where(keep, nn0, -1), sim0


def match_descriptors(desc0: torch.Tensor, desc1: torch.Tensor, config: MatcherConfig = MatcherConfig()
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Match (N0, D) against (N1, D). Returns matches0 (N0,) int64 (-1: none) and scores0 (N0,)
    in [0, 1], (cos + 1) / 2 for matched keypoints and 0 otherwise."""
    if len(desc0) == 0 or len(desc1) == 0:
        return (torch.full((len(desc0),), -1, dtype=torch.long, device=desc0.device),
                torch.zeros(len(desc0), device=desc0.device))
    if config.mutual_check and config.ratio_threshold is None:
        matches0, sim0 = mutual_nearest_single_pass(desc0, desc1, config)
    else:
        matches0, sim0 = nearest_neighbours(desc0, desc1, config)
        if config.mutual_check:
            matches1, _ = nearest_neighbours(desc1, desc0, config)
            matched = matches0 >= 0
            back = torch.full_like(matches0, -1)
            back[matched] = matches1[matches0[matched]]
            matches0 = torch.where(back == torch.arange(len(desc0), device=desc0.device), matches0, -1)
    scores0 = torch.where(matches0 >= 0, (sim0 + 1) / 2, torch.zeros_like(sim0))
    return matches0, scores0


def mutual_nearest_neighbours(desc0: torch.Tensor, desc1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain mutual NN (no thresholds)."""
    return match_descriptors(desc0, desc1, MatcherConfig())
