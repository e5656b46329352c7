"""D2-Net's soft detection scores (official `model.SoftDetectionModule`, window 3), made NaN-free.

For a dense map D (B, C, h, w), with D <- relu(D):
  alpha = exp(D / max D) / sum_{3x3} exp(D / max D)     soft local max; the border is padded with exp(0) = 1
  beta  = D / max_c D                                    ratio to the channel-wise maximum
  s     = max_c (alpha * beta), normalised to sum 1 over (h, w) per image.
The division by the per-sample maximum (official code, not in the paper) keeps exp() in range.
Upstream divides by zero where a sample or a cell is all zero (NaN losses, d2-net#25); here
those ratios are 0 and an all-zero image gets uniform scores 1 / (h w).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-12


def soft_local_max(dense: torch.Tensor, window: int = 3) -> torch.Tensor:
    """alpha (B, C, h, w) of a non-negative map: exp(D / max) over its window sum (pad value exp(0))."""
    batch = dense.shape[0]
    sample_max = dense.reshape(batch, -1).max(dim=1).values.clamp(min=EPS).view(batch, 1, 1, 1)
    exp = torch.exp(dense / sample_max)
    pad = window // 2
    window_sum = window * window * F.avg_pool2d(F.pad(exp, [pad] * 4, mode="constant", value=1.0),
                                                window, stride=1)
    return exp / window_sum


def ratio_to_max(dense: torch.Tensor) -> torch.Tensor:
    """beta (B, C, h, w) of a non-negative map: D / max_c D, 0 where every channel is 0."""
    channel_max = dense.max(dim=1, keepdim=True).values
    return dense / channel_max.clamp(min=EPS)


def soft_detection_scores(dense: torch.Tensor, window: int = 3) -> torch.Tensor:
    """Raw dense map (B, C, h, w) (ReLU applied here) -> scores (B, h, w), each image summing to 1."""
    if dense.ndim != 4:
        raise ValueError(f"expected a dense map (B, C, h, w), got shape {tuple(dense.shape)}")
    dense = F.relu(dense)
    scores = (soft_local_max(dense, window) * ratio_to_max(dense)).max(dim=1).values  # (B, h, w)
    total = scores.sum(dim=(1, 2), keepdim=True)
    uniform = torch.full_like(scores, 1.0 / (scores.shape[1] * scores.shape[2]))
    return torch.where(total > EPS, scores / total.clamp(min=EPS), uniform)
