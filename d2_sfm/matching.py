"""Mutual-nearest-neighbour matching of L2-normalised descriptors (hloc's NN-mutual semantics).

Distances are squared L2 between unit vectors, 2 - 2 cos. Large sets are processed in chunks of
rows so that 20k x 20k keypoints never materialise a full similarity matrix.

Ties are broken by a rule, not by float rounding: identical descriptors (D2 emits them for keypoints
on tied channels) would get similarities that differ in the last bit depending on where a row falls
in the matmul's blocking, which varies with the CPU (AVX2, AVX-512) and the thread count. So exact
duplicates are matched once, as the descriptor they share: the first copy in each set stands for
all of them; with the mutual check, only that first copy can be matched (one-to-one), without it
every copy gets its first copy's match, and the ratio test rejects a nearest neighbour that has an
exact duplicate (its second-nearest distance equals the nearest, as in hloc).
"""
from __future__ import annotations

import torch

from .configs import MatcherConfig  # noqa: F401  (re-exported: the settings live in configs)


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


def first_copies(desc: torch.Tensor) -> torch.Tensor:
    """For each row of desc (N, D), the index of the first row with exactly the same values (N,).

    Rows are keyed by an integer hash of their bit patterns (exact and order-independent, so the
    same on every CPU); only when two keys collide are the rows compared in full.
    """
    rows = torch.arange(len(desc), device=desc.device)
    if len(desc) < 2:
        return rows
    bits = desc.float().contiguous().view(torch.int32).long()  # (N, D); -0.0 and 0.0 differ: fine
    generator = torch.Generator().manual_seed(len(desc[0]))
    weights = torch.randint(1, 2 ** 62, (desc.shape[1],), generator=generator).to(desc.device) | 1
    keys = (bits * weights).sum(dim=1)  # int64, wraps around: exact
    if len(keys.unique()) == len(keys):
        return rows
    _, inverse = torch.unique(desc.float(), dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(desc), device=desc.device).scatter_reduce_(
        0, inverse, rows, reduce="amin")
    return first[inverse]


def match_descriptors(desc0: torch.Tensor, desc1: torch.Tensor, config: MatcherConfig = MatcherConfig()
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Match (N0, D) against (N1, D). Returns matches0 (N0,) int64 (-1: none) and scores0 (N0,)
    in [0, 1], (cos + 1) / 2 for matched keypoints and 0 otherwise. Exact duplicate descriptors
    follow the module's tie rule."""
    if len(desc0) == 0 or len(desc1) == 0:
        return (torch.full((len(desc0),), -1, dtype=torch.long, device=desc0.device),
                torch.zeros(len(desc0), device=desc0.device))
    first0, first1 = first_copies(desc0), first_copies(desc1)
    rows0, rows1 = torch.arange(len(desc0), device=desc0.device), torch.arange(len(desc1), device=desc1.device)
    if torch.equal(first0, rows0) and torch.equal(first1, rows1):
        return match_distinct(desc0, desc1, config)
    unique0, unique1 = torch.nonzero(first0 == rows0)[:, 0], torch.nonzero(first1 == rows1)[:, 0]
    matches_u, scores_u = match_distinct(desc0[unique0], desc1[unique1], config)
    matched = matches_u >= 0
    if config.ratio_threshold is not None:  # a nearest neighbour with an exact twin fails the ratio test
        copies1 = torch.bincount(first1, minlength=len(desc1))
        matched &= copies1[unique1[matches_u.clamp(min=0)]] == 1
    matches_u = torch.where(matched, unique1[matches_u.clamp(min=0)], -1)
    scores_u = torch.where(matched, scores_u, torch.zeros_like(scores_u))
    position = torch.zeros(len(desc0), dtype=torch.long, device=desc0.device)
    position[unique0] = torch.arange(len(unique0), device=desc0.device)
    matches0, scores0 = matches_u[position[first0]], scores_u[position[first0]]
    if config.mutual_check:  # one-to-one: copies after the first stay unmatched
        copy = first0 != rows0
        matches0, scores0 = matches0.masked_fill(copy, -1), scores0.masked_fill(copy, 0)
    return matches0, scores0


def match_distinct(desc0: torch.Tensor, desc1: torch.Tensor, config: MatcherConfig
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """match_descriptors for sets without exact duplicate rows."""
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
