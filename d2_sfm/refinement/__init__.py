"""Keypoint refinement (Pixel-Perfect SfM's keypoint adjustment, reimplemented in torch): tentative
tracks from raw matches, then batched bounded alignment of every track keypoint to its root, either
photometric (affine Lucas-Kanade on image patches) or featuremetric (dense low-level D2 features).
After mapping, `refinement.bundle` (imported where it is used) realigns the observations of each 3D
point and adjusts poses and points: featuremetric bundle adjustment, solved by `bundle_solver`."""
from ..configs import DENSE_LAYERS, AffineConfig, PatchConfig, SolverConfig
from .dense import DenseMap, backbone, dense_maps
from .geometry import epipolar_inliers
from .keypoints import KeypointAdjustment, adjust_keypoints, descriptors_at, refine_query_keypoints
from .local_affine import local_linear_maps
from .optimize import align
from .patches import prepare_image
from .photometric import (adjust_keypoints_photometric, align_matched_keypoints, refine_pair_keypoints, to_original,
                          to_working, working_image)
from .tracks import Tracks, build_tracks

__all__ = ["DENSE_LAYERS", "AffineConfig", "DenseMap", "KeypointAdjustment", "PatchConfig", "SolverConfig", "Tracks",
           "adjust_keypoints", "adjust_keypoints_photometric", "align", "align_matched_keypoints", "backbone",
           "build_tracks", "dense_maps", "descriptors_at", "epipolar_inliers", "local_linear_maps", "prepare_image",
           "refine_pair_keypoints", "refine_query_keypoints", "to_original", "to_working", "working_image"]
