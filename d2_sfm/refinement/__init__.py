"""Featuremetric refinement (Pixel-Perfect SfM, reimplemented in torch): tentative tracks from raw
matches, dense low-level D2 backbone features, and batched bounded alignment of keypoints."""
from .dense import LAYERS, DenseMap, backbone, dense_maps
from .keypoints import KeypointAdjustment, adjust_keypoints, descriptors_at, refine_query_keypoints
from .optimize import SolverConfig, align
from .tracks import Tracks, build_tracks

__all__ = ["LAYERS", "DenseMap", "KeypointAdjustment", "SolverConfig", "Tracks", "adjust_keypoints", "align",
           "backbone", "build_tracks", "dense_maps", "descriptors_at", "refine_query_keypoints"]
