"""Dense low-level features from the early layers of D2-Net's VGG16 backbone, and the geometry
of sampling them at keypoints.

Coordinates: keypoints are in original-image pixels with integer = pixel centre (hloc). A layer
after k max-pools has stride s = 2^k over the image the network sees (resized by `scale`); its
cell j covers pixels s*j .. s*j+s-1, so a keypoint x maps to u = (x + 0.5) * scale / s - 0.5
feature-map cells (integer = cell centre), the convention of `grid_sample(align_corners=False)`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..configs import DENSE_LAYERS
from ..model import preprocess

@dataclass(frozen=True)
class DenseMap:
    """L2-normalised features (C, h, w) of one image and the map from keypoints to its cells."""
    features: torch.Tensor  # (C, h, w)
    scale: tuple[float, float]  # feature cells per original pixel-corner unit, x and y

    def to_cells(self, keypoints: torch.Tensor) -> torch.Tensor:
        """Keypoints (N, 2) original pixels -> (N, 2) feature-map cells."""
        scale = keypoints.new_tensor(self.scale)
        return (keypoints + 0.5) * scale - 0.5

    def to_pixels(self, cells: torch.Tensor) -> torch.Tensor:
        scale = cells.new_tensor(self.scale)
        return (cells + 0.5) / scale - 0.5


def backbone(model: nn.Module, layers: tuple[str, ...]) -> nn.Sequential:
    """The first modules of a d2_sfm.model.D2Net, up to the deepest of `layers` (shares its weights)."""
    unknown = [layer for layer in layers if layer not in DENSE_LAYERS]
    if unknown or not layers:
        raise ValueError(f"unknown dense layer(s) {unknown or layers}: expected some of {', '.join(DENSE_LAYERS)}")
    return model.dense_feature_extraction.model[:max(DENSE_LAYERS[layer][0] for layer in layers)]


@torch.inference_mode()
def dense_maps(network: nn.Sequential, layers: tuple[str, ...], image_rgb: np.ndarray,
               original_size: tuple[int, int], preprocessing: str = "caffe") -> list[DenseMap]:
    """Dense maps of `layers` (one forward pass) for `image_rgb` (h, w, 3) uint8, an image of
    `original_size` (W, H) resized; on the network's device."""
    device = next(network.parameters()).device
    tensor = torch.from_numpy(np.ascontiguousarray(image_rgb)).to(device).permute(2, 0, 1)[None].float()
    tensor = preprocess(tensor, preprocessing)
    mkldnn = device.type == "cpu" and torch.backends.mkldnn.is_available()
    if mkldnn:
        tensor = tensor.to_mkldnn()  # oneDNN layout between layers: same kernels, fewer re-orderings
    taps = {DENSE_LAYERS[layer][0]: layer for layer in layers}
    found: dict[str, torch.Tensor] = {}
    for index, module in enumerate(network, start=1):
        tensor = module(tensor)
        if index in taps:
            found[taps[index]] = (tensor.to_dense() if mkldnn else tensor)[0]
    height, width = image_rgb.shape[:2]
    maps = []
    for layer in layers:
        stride = DENSE_LAYERS[layer][1]
        scale = (width / original_size[0] / stride, height / original_size[1] / stride)
        maps.append(DenseMap(F.normalize(found[layer], dim=0), scale))  # (C, h/s, w/s) unit vectors
    return maps


def cut_patches(features: torch.Tensor, centres: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Square patches (N, C, size, size) of a map (C, h, w) around cells `centres` (N, 2), and
    their top-left cells (N, 2) (shifted inside the map near its border)."""
    _, height, width = features.shape
    corner = torch.floor(centres) - (size // 2 - 1)
    limit = centres.new_tensor([max(width - size, 0), max(height - size, 0)])
    corner = torch.minimum(torch.clamp(corner, min=0), limit).long()
    steps = torch.arange(size, device=features.device)
    xs = (corner[:, 0, None] + steps).clamp(max=width - 1)  # (N, size)
    ys = (corner[:, 1, None] + steps).clamp(max=height - 1)
    patches = features[:, ys[:, :, None], xs[:, None, :]]  # (C, N, size, size)
    return patches.permute(1, 0, 2, 3), corner.to(centres.dtype)


def sample(maps: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Bilinear samples (N, K, C) of maps (N, C, h, w) at cells (N, K, 2), border replicated."""
    _, _, height, width = maps.shape
    size = cells.new_tensor([width, height])
    grid = (2 * (cells + 0.5) / size - 1)[:, :, None]  # (N, K, 1, 2)
    values = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return values[..., 0].permute(0, 2, 1)


# the value and the central differences at a cell: offsets of the five taps (in cells)
TAPS = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])


def sample_with_gradient(patches: torch.Tensor, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised descriptors (N, C) at patch cells (N, 2) and their Jacobians (N, C, 2) per cell.

    Central differences sampled bilinearly equal the bilinear interpolation of the central
    difference maps, so no gradient maps are stored; normalisation is differentiated exactly."""
    taps = cells[:, None] + TAPS.to(cells)[None]  # (N, 5, 2)
    values = sample(patches, taps)  # (N, 5, C)
    raw = values[:, 0]
    gradient = torch.stack([(values[:, 1] - values[:, 2]) / 2, (values[:, 3] - values[:, 4]) / 2], dim=-1)
    norm = raw.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    unit = raw / norm
    # d(f/|f|) = (I - u u^T) df / |f|
    jacobian = (gradient - unit[..., None] * (unit[..., None] * gradient).sum(1, keepdim=True)) / norm[..., None]
    return unit, jacobian


def sample_descriptor(patches: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """L2-normalised descriptors (N, C) at patch cells (N, 2)."""
    return F.normalize(sample(patches, cells[:, None])[:, 0], dim=-1)
