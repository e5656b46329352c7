"""D2-Net's detection-weighted triplet margin ranking loss (official `lib/loss.loss_function`).

Per pair, with unit descriptors d (raw dense map, L2-normalised per cell) and soft scores s:
  positive  p(c) = |d1(c) - d2(c')|^2 = 2 - 2 <d1(c), d2(c')>       c' = round((pos2 - 3.5) / 8)
  negative  n(c) = min(hardest in image 2 for d1(c), hardest in image 1 for d2(c')), where a
            "negative" cell is one whose Chebyshev distance from the true cell is > safe_radius
  loss      = sum_c s1(c) s2(c') relu(margin + p(c) - n(c)) / sum_c s1(c) s2(c')
A pair with fewer than `min_correspondences` correspondences gives no loss (None), and so does a
batch without any valid pair: the trainer skips that step (upstream raises NoGradientError).

Correspondences come from the data: cells (i, j) of image 1's feature map and the matching
sub-pixel positions (i, j) in image 2 (integer = pixel centre). Positions whose nearest cell falls
outside image 2's map (near borders) are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .network import pixel_to_cell

MARGIN = 1.0
SAFE_RADIUS = 4  # feature-map cells (32 px at stride 8)
MIN_CORRESPONDENCES = 128
NEGATIVE_MASK_PENALTY = 10.0  # added to distances inside the safe radius (squared distances are <= 4)


@dataclass(frozen=True)
class Correspondences:
    """Ground-truth matches of one pair: image-1 cells and image-2 pixel positions, both (i, j)."""
    cells1: torch.Tensor  # (K, 2) long
    pixels2: torch.Tensor  # (K, 2) float

    def __len__(self) -> int:
        return len(self.cells1)

    def to(self, device: torch.device | str) -> "Correspondences":
        return Correspondences(self.cells1.to(device), self.pixels2.to(device))


@dataclass(frozen=True)
class LossResult:
    loss: torch.Tensor | None  # mean over valid pairs, None when no pair was valid
    valid_pairs: int
    correspondences: int  # used, summed over valid pairs
    triplet_accuracy: float  # share of correspondences with positive < hardest negative


def grid_cells(height: int, width: int, device: torch.device) -> torch.Tensor:
    """All cells of an (h, w) map as (h*w, 2) long (i, j), row-major like `.view(C, -1)`."""
    i, j = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device),
                          indexing="ij")
    return torch.stack([i.reshape(-1), j.reshape(-1)], dim=1)


def hardest_negative(anchors: torch.Tensor, anchor_cells: torch.Tensor, all_descriptors: torch.Tensor,
                     all_cells: torch.Tensor, safe_radius: float) -> torch.Tensor:
    """For each anchor (K, C) whose true cell in the other map is anchor_cells (K, 2): the smallest
    squared distance to a descriptor of that map (N, C) at Chebyshev distance > safe_radius."""
    distances = 2 - 2 * anchors @ all_descriptors.T  # (K, N)
    chebyshev = (anchor_cells[:, None, :] - all_cells[None, :, :]).abs().amax(dim=2)
    penalty = (chebyshev <= safe_radius).to(distances.dtype) * NEGATIVE_MASK_PENALTY
    return (distances + penalty).min(dim=1).values


def valid_cells2(correspondences: Correspondences, height2: int, width2: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest image-2 cells (K', 2) of the correspondences and the mask (K,) of those inside the map."""
    cells2 = torch.round(pixel_to_cell(correspondences.pixels2)).long()
    inside = ((cells2[:, 0] >= 0) & (cells2[:, 0] < height2) & (cells2[:, 1] >= 0) & (cells2[:, 1] < width2))
    return cells2[inside], inside


def pair_loss(dense1: torch.Tensor, dense2: torch.Tensor, scores1: torch.Tensor, scores2: torch.Tensor,
              correspondences: Correspondences, margin: float = MARGIN, safe_radius: float = SAFE_RADIUS,
              min_correspondences: int = MIN_CORRESPONDENCES) -> tuple[torch.Tensor, float, int] | None:
    """Loss of one pair: dense maps (C, h, w), scores (h, w). Returns (loss, triplet accuracy,
    correspondences used), or None when fewer than `min_correspondences` remain."""
    channels, height1, width1 = dense1.shape
    _, height2, width2 = dense2.shape
    cells2, inside = valid_cells2(correspondences, height2, width2)
    cells1 = correspondences.cells1[inside]
    if len(cells1) < min_correspondences:
        return None
    all_descriptors1 = F.normalize(dense1.reshape(channels, -1), dim=0).T  # (h1*w1, C)
    all_descriptors2 = F.normalize(dense2.reshape(channels, -1), dim=0).T
    descriptors1 = all_descriptors1[cells1[:, 0] * width1 + cells1[:, 1]]  # (K, C)
    descriptors2 = all_descriptors2[cells2[:, 0] * width2 + cells2[:, 1]]
    positive = 2 - 2 * (descriptors1 * descriptors2).sum(dim=1)
    negative2 = hardest_negative(descriptors1, cells2, all_descriptors2,
                                 grid_cells(height2, width2, dense2.device), safe_radius)
    negative1 = hardest_negative(descriptors2, cells1, all_descriptors1,
                                 grid_cells(height1, width1, dense1.device), safe_radius)
    diff = positive - torch.minimum(negative1, negative2)
    weights = scores1[cells1[:, 0], cells1[:, 1]] * scores2[cells2[:, 0], cells2[:, 1]]
    loss = (weights * F.relu(margin + diff)).sum() / weights.sum().clamp(min=1e-20)
    return loss, (diff < 0).float().mean().item(), len(cells1)


def batch_loss(dense1: torch.Tensor, dense2: torch.Tensor, scores1: torch.Tensor, scores2: torch.Tensor,
               correspondences: list[Correspondences], **options) -> LossResult:
    """Mean pair loss over the valid pairs of a batch: dense (B, C, h, w), scores (B, h, w)."""
    losses, accuracies, counts = [], [], []
    for index, pair in enumerate(correspondences):
        result = pair_loss(dense1[index], dense2[index], scores1[index], scores2[index], pair, **options)
        if result is not None:
            losses.append(result[0])
            accuracies.append(result[1] * result[2])
            counts.append(result[2])
    if not losses:
        return LossResult(None, 0, 0, 0.0)
    return LossResult(torch.stack(losses).mean(), len(losses), sum(counts), sum(accuracies) / sum(counts))
