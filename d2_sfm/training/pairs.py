"""A training pair (two crops + ground-truth correspondences) and its batching, shared by all datasets."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .losses import Correspondences
from .network import cell_to_pixel


@dataclass(frozen=True)
class PairSample:
    """Two RGB crops as float tensors (3, H, W) in 0..255 and correspondences image 1 -> image 2."""
    image1: torch.Tensor
    image2: torch.Tensor
    correspondences: Correspondences


@dataclass(frozen=True)
class PairBatch:
    image1: torch.Tensor  # (B, 3, H, W) float 0..255 RGB
    image2: torch.Tensor
    correspondences: list[Correspondences]

    def to(self, device: torch.device | str) -> "PairBatch":
        return PairBatch(self.image1.to(device), self.image2.to(device),
                         [c.to(device) for c in self.correspondences])


def collate_pairs(samples: list[PairSample]) -> PairBatch:
    return PairBatch(torch.stack([s.image1 for s in samples]), torch.stack([s.image2 for s in samples]),
                     [s.correspondences for s in samples])


def image_tensor(image_rgb: np.ndarray) -> torch.Tensor:
    """RGB (H, W, 3) uint8/float -> (3, H, W) float32 0..255."""
    return torch.from_numpy(np.ascontiguousarray(image_rgb, dtype=np.float32)).permute(2, 0, 1)


def cell_grid_pixels(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """All cells (h*w, 2) (i, j) of a train-net map of an image of height x width pixels and their
    pixel positions (h*w, 2) (i, j) (8 p + 3.5; integer = pixel centre)."""
    i, j = np.meshgrid(np.arange(height // 8), np.arange(width // 8), indexing="ij")
    cells = np.stack([i.ravel(), j.ravel()], axis=1)
    return cells, cell_to_pixel(torch.from_numpy(cells).double()).numpy()
