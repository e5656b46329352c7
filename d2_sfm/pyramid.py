"""Single- and multi-scale D2-Net keypoints from a network and an image (official `process_multiscale`).

Multi-scale, as officially: for scales 0.5 -> 1 -> 2, the level's dense map is summed with the
bilinearly upsampled running sum of the coarser levels; detections are banned where a coarser
level already detected (the ban is recorded before the |step| < 0.5 filter); scores are the summed
activation at the detected cell divided by the number of summed levels. Unlike the official code,
a level without detections does not crash.

Coordinates: a feature cell p maps to 4p + 1.5 pixels in the level image (official parity, integer
= pixel centre). Levels are made with align_corners=True, so level pixel k is input pixel
k * (S - 1) / (s - 1) per axis (the official code uses the size ratio S / s, up to ~0.5 px off).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .detection import EDGE_THRESHOLD, detect, keep_refined, sample_descriptors
from .model import feature_map_size

EMPTY_CHANNELS = 512  # descriptor size reported when no level could run
DenseFn = Callable[[torch.Tensor], torch.Tensor]  # (1, 3, H, W) -> (1, C, h, w)


@dataclass
class Keypoints:
    """Detections in network-input pixels."""
    xy: torch.Tensor  # (N, 2) float: x = column, y = row; integer = pixel centre
    scores: torch.Tensor  # (N,)
    descriptors: torch.Tensor  # (N, C), unit L2 norm
    scales: torch.Tensor  # (N,) 1 / pyramid scale, as the official third keypoint column

    @staticmethod
    def empty(channels: int, device: torch.device) -> "Keypoints":
        return Keypoints(torch.zeros(0, 2, device=device), torch.zeros(0, device=device),
                         torch.zeros(0, channels, device=device), torch.zeros(0, device=device))

    def cat(self, other: "Keypoints") -> "Keypoints":
        return Keypoints(*(torch.cat([a, b]) for a, b in zip(
            (self.xy, self.scores, self.descriptors, self.scales),
            (other.xy, other.scores, other.descriptors, other.scales))))


def level_to_input(position_ij: torch.Tensor, level_hw: tuple[int, int],
                   input_hw: tuple[int, int]) -> torch.Tensor:
    """Feature cells (K, 2) (i, j) of a level -> input-image pixels (K, 2) as (x, y)."""
    pixel_ij = 4 * position_ij + 1.5
    ratio = [(s - 1) / (l - 1) if l > 1 else 1.0 for s, l in zip(input_hw, level_hw)]
    pixel_ij = pixel_ij * pixel_ij.new_tensor(ratio)
    return pixel_ij.flip(1)


def extract_keypoints(dense_fn: DenseFn, image: torch.Tensor, scales: tuple[float, ...] = (1.0,),
                      edge_threshold: float = EDGE_THRESHOLD) -> Keypoints:
    """Run the pyramid on a preprocessed image (1, 3, H, W)."""
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"expected one image (1, 3, H, W), got {tuple(image.shape)}")
    input_hw = tuple(image.shape[2:])
    result: Keypoints | None = None
    running_sum: torch.Tensor | None = None
    banned: torch.Tensor | None = None
    num_levels = 0  # levels summed so far (a level too small for the network is skipped, not counted)
    for scale in scales:
        level = image if scale == 1 else F.interpolate(
            image, scale_factor=scale, mode="bilinear", align_corners=True)
        if min(feature_map_size(*level.shape[2:])) < 1:
            continue  # too small for the network: no detections at this level
        level_hw = tuple(level.shape[2:])
        dense = dense_fn(level)  # (1, C, h, w)
        num_levels += 1
        del level
        if running_sum is not None:
            dense = add_upsampled(dense, running_sum)
        running_sum = dense
        level_kp, banned = detect_level(dense[0], banned, edge_threshold)
        level_kp.xy = level_to_input(level_kp.xy, level_hw, input_hw)
        level_kp.scores = level_kp.scores / num_levels
        level_kp.scales = torch.full_like(level_kp.scores, 1.0 / scale)
        result = level_kp if result is None else result.cat(level_kp)
    return result if result is not None else Keypoints.empty(EMPTY_CHANNELS, image.device)


def add_upsampled(dense: torch.Tensor, coarse: torch.Tensor, channel_chunk: int = 64) -> torch.Tensor:
    """dense + bilinear (align_corners) upsampling of coarse (1, C, h', w') to dense's size.

    Without autograd the sum is made in place in `dense`, a few channels at a time, so no second
    full-size map is allocated; the numbers equal the one-shot sum (as the official `+=`).
    """
    if torch.is_grad_enabled():
        return dense + F.interpolate(coarse, size=dense.shape[2:], mode="bilinear", align_corners=True)
    for start in range(0, dense.shape[1], channel_chunk):
        part = slice(start, start + channel_chunk)
        dense[:, part] += F.interpolate(coarse[:, part], size=dense.shape[2:], mode="bilinear",
                                        align_corners=True)
    return dense


def detect_level(dense: torch.Tensor, banned: torch.Tensor | None,
                 edge_threshold: float) -> tuple[Keypoints, torch.Tensor]:
    """Detections of one (C, h, w) level outside `banned`; returns them (xy still in cells (i, j))
    and the updated ban mask (h, w)."""
    detections = detect(dense, edge_threshold)
    height, width = dense.shape[1:]
    if banned is None:
        banned = torch.zeros(height, width, dtype=torch.bool, device=dense.device)
    else:
        banned = F.interpolate(banned[None, None].float(), size=(height, width), mode="nearest")[0, 0] > 0
        detections = detections.select(~banned[detections.cell[:, 0], detections.cell[:, 1]])
    banned[detections.cell[:, 0], detections.cell[:, 1]] = True  # before the step filter, officially

    detections = detections.select(keep_refined(detections))
    descriptors, valid = sample_descriptors(dense, detections.position)
    detections = detections.select(valid)
    scores = dense[detections.channel, detections.cell[:, 0], detections.cell[:, 1]]
    return Keypoints(detections.position, scores, descriptors, torch.ones_like(scores)), banned
