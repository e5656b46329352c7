"""Dense reference of the official D2-Net HardDetectionModule, for the detection tests only.

The package evaluates the tests only at candidate cells (d2_sfm.detection.detect); this is the
official all-cells formulation (conv2d finite differences, max_pool2d local maxima) that the tests
compare it against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from d2_sfm.detection import EDGE_THRESHOLD


def hard_detection_dense(dense: torch.Tensor, edge_threshold: float = EDGE_THRESHOLD) -> torch.Tensor:
    """Dense reference of the official HardDetectionModule: (C, h, w) bool."""
    x = dense[:, None]  # (C, 1, h, w): each channel as its own image
    depth_wise_max = dense == dense.max(dim=0, keepdim=True).values
    local_max = dense == F.max_pool2d(x, 3, stride=1, padding=1)[:, 0]
    kernels = {
        "dii": [[0, 1.0, 0], [0, -2.0, 0], [0, 1.0, 0]],
        "djj": [[0, 0, 0], [1.0, -2.0, 1.0], [0, 0, 0]],
        "dij": [[0.25, 0, -0.25], [0, 0, 0], [-0.25, 0, 0.25]],
    }
    d = {k: F.conv2d(x, dense.new_tensor(v)[None, None], padding=1)[:, 0] for k, v in kernels.items()}
    det = d["dii"] * d["djj"] - d["dij"] ** 2
    trace = d["dii"] + d["djj"]
    not_edge = (trace * trace / det <= (edge_threshold + 1) ** 2 / edge_threshold) & (det > 0)
    return depth_wise_max & local_max & not_edge
