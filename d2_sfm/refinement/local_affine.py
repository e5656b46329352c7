"""Local affine maps between two images from neighbouring correspondences, robust to outliers.

For every query point of image A, the k correspondences nearest to it in A vote: a small batched
RANSAC over random triplets of them (an affine map from each), then a least-squares refit on the
best triplet's inliers. Only the linear part is returned (the translation is the keypoint's own);
a query with too few or degenerate neighbours gets the identity (translation-only alignment).
"""
from __future__ import annotations

import torch

from ..configs import AffineConfig
from .optimize import single_thread


def local_linear_maps(source: torch.Tensor, target: torch.Tensor, queries: torch.Tensor, config: AffineConfig,
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear parts (N, 2, 2) of the local affine maps source -> target at queries (N, 2) of the
    source image, and whether each was fitted (N,) (else the identity).

    source, target (M, 2): corresponding points (with outliers) in the two images."""
    count = len(queries)
    maps = torch.eye(2, dtype=torch.float32, device=queries.device).expand(count, 2, 2).clone()
    fitted = torch.zeros(count, dtype=torch.bool, device=queries.device)
    k = min(config.neighbours, len(source))
    if count == 0 or k < max(config.min_inliers, 3):
        return maps, fitted
    generator = torch.Generator().manual_seed(seed)
    triplets = torch.rand(config.trials, k, generator=generator).argsort(-1)[:, :3].to(queries.device)  # (R, 3)
    source, target = source.float(), target.float()
    with single_thread(queries.device):
        for begin in range(0, count, config.chunk):
            end = begin + config.chunk
            linear, ok = fit_chunk(source, target, queries[begin:end].float(), triplets, k, config)
            maps[begin:end] = torch.where(ok[:, None, None], linear, maps[begin:end])
            fitted[begin:end] = ok
    return maps, fitted


def fit_chunk(source: torch.Tensor, target: torch.Tensor, queries: torch.Tensor, triplets: torch.Tensor, k: int,
              config: AffineConfig) -> tuple[torch.Tensor, torch.Tensor]:
    distances = torch.cdist(queries, source)  # (n, M)
    nearest = distances.topk(k, largest=False).indices  # (n, k)
    src = source[nearest] - queries[:, None]  # (n, k, 2), centred on the query for conditioning
    dst = target[nearest]
    dst_centre = dst.mean(1, keepdim=True)
    dst = dst - dst_centre
    homogeneous = torch.cat([src, torch.ones_like(src[..., :1])], -1)  # (n, k, 3)
    picked = homogeneous[:, triplets]  # (n, R, 3, 3)
    picked_dst = dst[:, triplets]  # (n, R, 3, 2)
    maps, info = torch.linalg.solve_ex(picked, picked_dst)  # (n, R, 3, 2): dst = [src 1] @ maps
    valid = (info == 0) & torch.isfinite(maps).all(-1).all(-1)
    maps = torch.where(valid[..., None, None], maps, torch.zeros_like(maps))
    predicted = homogeneous[:, None] @ maps  # (n, R, k, 2)
    inliers = (predicted - dst[:, None]).norm(dim=-1) < config.threshold  # (n, R, k)
    votes = torch.where(valid, inliers.sum(-1), torch.zeros_like(valid, dtype=torch.long))
    best = votes.argmax(-1)
    mask = inliers[torch.arange(len(best)), best].float()  # (n, k)
    weighted = homogeneous * mask[..., None]
    normal = weighted.transpose(1, 2) @ homogeneous  # (n, 3, 3)
    refit, info = torch.linalg.solve_ex(normal, weighted.transpose(1, 2) @ dst)  # (n, 3, 2)
    linear = refit[:, :2].transpose(1, 2)  # (n, 2, 2): d dst = linear @ d src
    ok = (info == 0) & (mask.sum(-1) >= config.min_inliers) & torch.isfinite(linear).all(-1).all(-1)
    values = torch.linalg.svdvals(torch.where(ok[:, None, None], linear, torch.eye(2).to(linear)))
    ok &= (values[:, 1] > 0.1) & (values[:, 0] < 10)  # a sane scale change, no fold
    ok &= torch.linalg.det(linear) > 0
    return linear, ok
