"""The settings of D2's stages (extraction, matching, keypoint refinement), importable without
torch: commands build their option parsers and validate options from these before any heavy
import, so --help, argument errors and missing-input errors are instant."""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Literal

from .errors import ConfigError, check_options

Preprocessing = Literal["caffe", "torch"]

EDGE_THRESHOLD = 5.0  # official: Hessian ratio test of the detection (edges rejected)
MULTISCALE_SCALES = (0.5, 1.0, 2.0)
# Tiles of at most this many input pixels per side (plus a 44-48 px halo): single scale up to
# 1600 px runs in one pass; multi-scale at 1600 px (3200 px at scale 2) stays under 4 GB.
DEFAULT_TILE_SIZE = 1600
EXTRACTION_PERFORMANCE_ONLY = ("tile_size",)  # options that do not change the features (not recorded)
# Network arithmetic. fp32: exact (TF32 off on GPUs). bf16: CPU autocast with channels-last
# activations, a faster network on CPUs with native bf16 (avx512_bf16 / AMX), but it kept only
# 96.4% of fp32 keypoints within 1 px on kermit at 640 px (94.2% multi-scale; measured with
# pipelines/benchmark_throughput.py --device cpu), below the 99% that `auto` requires, so auto
# means fp32 and bf16 is opt-in. fp16 (CUDA autocast) and tf32 (CUDA TF32 convolutions) are
# GPU-only. Detection, refinement and descriptor normalisation always run in fp32.
AUTO_PRECISION = "fp32"
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "tf32")


@dataclass(frozen=True)
class ExtractionConfig:
    multiscale: bool = False  # pyramid at scales 0.5, 1, 2 (official --multiscale)
    max_edge: int | None = 1600  # shrink so that the longer side is at most this (official)
    max_sum_edges: int | None = 2800  # then shrink until W + H is at most this (official)
    max_keypoints: int | None = None  # keep the K best-scoring keypoints (None: all)
    preprocessing: Preprocessing = "caffe"  # "caffe" for the official and HED weights
    use_relu: bool = True  # ReLU after conv4_3 (official default)
    edge_threshold: float = EDGE_THRESHOLD
    tile_size: int | None = DEFAULT_TILE_SIZE  # network tiles (input px per side); None: whole image
    precision: str = "auto"  # one of PRECISIONS; recorded resolved (a resume never mixes them)

    def __post_init__(self) -> None:
        if self.tile_size is not None and self.tile_size < 16:
            raise ConfigError(f"tile_size must be None or at least 16 px, got {self.tile_size}")
        check_options("extraction",
                      max_edge=self.max_edge is not None and not (self.max_edge == 0 or self.max_edge >= 16),
                      max_sum_edges=self.max_sum_edges is not None and not (self.max_sum_edges == 0
                                                                            or self.max_sum_edges >= 32),
                      max_keypoints=self.max_keypoints is not None and self.max_keypoints < 1)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @property
    def scales(self) -> tuple[float, ...]:
        return MULTISCALE_SCALES if self.multiscale else (1.0,)

    def as_attributes(self) -> dict[str, object]:
        """Flat settings for HDF5 attributes / summary.json (None -> 0); performance-only options,
        which leave the features unchanged, are left out."""
        return {k: (0 if v is None else v) for k, v in dataclasses.asdict(self).items()
                if k not in EXTRACTION_PERFORMANCE_ONLY}


@dataclass(frozen=True)
class MatcherConfig:
    ratio_threshold: float | None = None  # Lowe's ratio on L2 distances (None: off, as hloc's D2 setting)
    distance_threshold: float | None = None  # max L2 distance (None: off)
    mutual_check: bool = True
    chunk_size: int = 4096  # rows of descriptors0 per similarity block

    def __post_init__(self) -> None:
        check_options("matcher", chunk_size=self.chunk_size < 1,
                      ratio_threshold=self.ratio_threshold is not None and not 0 < self.ratio_threshold <= 1,
                      distance_threshold=self.distance_threshold is not None and not 0 < self.distance_threshold <= 2)


# Keypoint refinement (d2_sfm.refine, d2_sfm.refinement)

# name -> (number of modules of the D2 Sequential up to and including the layer's ReLU, stride)
DENSE_LAYERS: dict[str, tuple[int, int]] = {
    "conv1_2": (4, 1),
    "conv2_2": (9, 2),
    "conv3_3": (16, 4),
}


@dataclass(frozen=True)
class SolverConfig:
    loss_scale: float = 0.25  # Cauchy a: residual norms well above it count as outliers
    bound: float = 4.0  # largest move per axis, in feature-map cells
    iterations: int = 30
    tolerance: float = 1e-3  # a keypoint whose step is below this (cells) has converged
    chunk: int = 8192  # keypoints per batch (memory: chunk x C x patch^2 floats)


@dataclass(frozen=True)
class PatchConfig:
    size: int = 17  # template side in working pixels (odd)
    blur: float = 1.0  # Gaussian sigma of the smoothing before sampling (pixels)
    bound: float = 4.0  # largest move of the translation per axis (working pixels)
    translation_steps: int = 5  # steps with the linear part fixed, before the affine ones
    affine_steps: int = 10  # steps of all six parameters (0: translation only)
    loss_scale: float = 0.5  # Cauchy scale on residuals of unit-variance intensities
    min_ncc: float = 0.5  # a keypoint whose aligned patch correlates less keeps its start
    max_distortion: float = 2.0  # linear parts whose singular values leave [1/x, x] x initial: keep start
    tolerance: float = 1e-3  # a keypoint whose translation step is below this has converged (pixels)
    colour: bool = False  # align RGB patches instead of grey ones
    chunk: int = 4096  # keypoints aligned per batch (memory: chunk x size^2 x channels x 6 floats)


@dataclass(frozen=True)
class AffineConfig:
    neighbours: int = 24  # correspondences around each query that vote
    trials: int = 32  # random triplets per query
    threshold: float = 4.0  # inlier distance in target pixels
    min_inliers: int = 5  # fewer: identity linear part
    chunk: int = 2048  # queries per batch (memory: chunk x trials x neighbours)


@dataclass(frozen=True)
class BundleConfig:
    """Featuremetric bundle adjustment after mapping (--refine keypoints+bundle): every observation of
    each 3D point is aligned to the point's reference observation (Lucas-Kanade on patches), the
    photometrically inconsistent ones leave the model, and poses and points minimise the patch cost's
    quadratic model at each aligned position (anisotropic: an edge constrains only across itself)."""
    bound: float = 2.0  # largest move per axis of a realigned observation (px; keypoints were adjusted already)
    affine_steps: int = 5  # of the realignment (keypoint adjustment's 10 took 60% longer on Sceaux, same result)
    pixel_sigma: float = 0.5  # the median observation's position uncertainty (px) its information is scaled to
    information_floor: float = 0.05  # smallest eigenvalue kept, as a fraction of the mean one (no flat directions)
    loss_scale: float = 2.0  # Cauchy scale on whitened residuals (units of pixel_sigma for a median observation)
    max_iterations: int = 50  # Levenberg-Marquardt steps per round
    function_tolerance: float = 1e-6  # relative cost decrease that ends them (Cauchy reweighting converges linearly)
    max_reprojection_error: float = 4.0  # px: observations farther after adjustment leave (COLMAP's filter)
    # Models with more registered images keep their poses (only the points move): the solver's reduced
    # camera system is dense, (6 N)^2 doubles and O(N^3) per step: 290 MB at 1000 images.
    max_pose_images: int = 1000
    # Also refine the focal length and distortion of self-calibrated cameras (as mapping does; the principal
    # point stays). Off: on three renderings of the sample scene (seeds 0, 1, 2) the largest rotation error went
    # 0.022 / 0.123 / 0.112 -> 0.112 / 0.072 / 0.075 deg, the focal length to +0.4-0.6 % of the truth each time.
    refine_intrinsics: bool = False


REFINE_MODES = ("none", "keypoints", "keypoints+bundle")
REFINE_METHODS = ("patches", "features")
FEATURE_ONLY = ("layers", "bounds", "loss_scale", "iterations", "weights")  # settings of method features
PATCH_ONLY = ("patch", "affine")  # settings of method patches
REFINE_PERFORMANCE_ONLY = ("cache_mb", "chunk")


@dataclass(frozen=True)
class RefineConfig:
    # "none" | "keypoints" | "keypoints+bundle". Measured in one run (pipelines/benchmark_accuracy.py,
    # incremental mapper): mean reprojection error none / keypoints / keypoints+bundle kermit 1.26 / 1.02 /
    # 0.64 px, Sceaux 1.16 / 0.90 / 0.45; median relative rotation against COLMAP SIFT's model kermit
    # 0.97 / 0.55 / 0.31 deg, Sceaux 0.87 / 0.85 / 0.22; temple's against its ground truth 10.3 / 11.9 /
    # 1.9; the sample scene's largest rotation error against its ground truth 0.341 / 0.097 / 0.022 deg
    # (COLMAP SIFT 0.090); synthetic Aachen median position 0.034 / 0.006 / 0.004 m; refine + bundle
    # 12-22 % of the unrefined wall. The wrong 5-view temple model that refinement builds without known intrinsics is
    # flagged by the focal-length uncertainty check (ReliabilityConfig.max_focal_uncertainty).
    mode: str = "keypoints+bundle"
    # "patches" | "features". Mean MMA@1 over the five real homography pairs (pipelines/eval_homography.py
    # --refine --refine-method patches,features): none 0.068, features 0.138, patches 0.304.
    method: str = "patches"
    patch: PatchConfig = PatchConfig()  # method patches: the Lucas-Kanade alignment
    affine: AffineConfig = AffineConfig()  # method patches: the local affine shapes that start it
    bundle: BundleConfig = BundleConfig()  # mode keypoints+bundle: the adjustment after mapping
    layers: tuple[str, ...] = ("conv3_3", "conv1_2")  # dense levels, coarse to fine
    bounds: tuple[float, ...] = (1.0, 2.0)  # largest move per axis at each level, in that level's cells
    max_edge: int | None = 1600  # the dense features' image size (resized like extraction)
    max_sum_edges: int | None = 2800
    loss_scale: float = 0.25  # Cauchy scale on descriptor distances (unit descriptors: <= 2)
    iterations: int = 10  # LM steps per level (kermit: 30 moved keypoints the same, median 3.42 vs 3.43 px)
    min_match_score: float = 0.0  # matches below this do not join tracks
    # matches farther than this (working pixels) from their pair's epipolar lines do not join tracks;
    # None: all tentative matches (pixsfm's choice)
    epipolar_threshold: float | None = 3.0
    weights: str | None = None  # D2 weights for the dense features; None: those of the features file
    cache_mb: int = 2048  # dense maps / prepared images kept in memory between the two passes (performance only)
    chunk: int = 8192  # keypoints aligned per batch (performance only)

    def __post_init__(self) -> None:
        check_options("refine", mode=self.mode not in REFINE_MODES,
                      method=self.method not in REFINE_METHODS,
                      patch_size=self.patch.size < 5 or self.patch.size % 2 == 0,
                      patch_bound=not 0 < self.patch.bound <= 32, patch_blur=self.patch.blur < 0,
                      patch_steps=self.patch.translation_steps < 0 or self.patch.affine_steps < 0
                      or self.patch.translation_steps + self.patch.affine_steps < 1,
                      affine_neighbours=self.affine.neighbours < 3 or self.affine.trials < 1,
                      layers=not self.layers or any(layer not in DENSE_LAYERS for layer in self.layers),
                      bounds=len(self.bounds) != len(self.layers) or any(not 0 < b <= 16 for b in self.bounds),
                      max_edge=self.max_edge is not None and self.max_edge < 16,
                      loss_scale=not self.loss_scale > 0, iterations=self.iterations < 1,
                      epipolar_threshold=self.epipolar_threshold is not None and not self.epipolar_threshold > 0,
                      cache_mb=self.cache_mb < 0, chunk=self.chunk < 1,
                      bundle_bound=not 0 < self.bundle.bound <= 32,
                      bundle_affine_steps=self.bundle.affine_steps < 0,
                      bundle_pixel_sigma=not self.bundle.pixel_sigma > 0,
                      bundle_loss_scale=not self.bundle.loss_scale > 0,
                      bundle_information_floor=not 0 < self.bundle.information_floor <= 1,
                      bundle_max_iterations=self.bundle.max_iterations < 1,
                      bundle_max_reprojection_error=not self.bundle.max_reprojection_error > 0,
                      bundle_max_pose_images=self.bundle.max_pose_images < 2)

    @property
    def bundle_adjusts(self) -> bool:
        return self.mode == "keypoints+bundle"

    def solvers(self) -> list[SolverConfig]:
        return [SolverConfig(self.loss_scale, bound, self.iterations, chunk=self.chunk) for bound in self.bounds]

    def settings(self) -> dict[str, object]:
        """Everything that changes the refined keypoints (weights: the resolved name is added by main)."""
        unused = PATCH_ONLY if self.method == "features" else FEATURE_ONLY
        if self.bundle_adjusts:  # the bundle adjustment aligns patches whatever the method
            unused = tuple(name for name in unused if name not in PATCH_ONLY)
        else:
            unused += ("bundle",)  # runs made before bundle existed stay valid
        settings = {k: v for k, v in asdict(self).items() if k not in REFINE_PERFORMANCE_ONLY + unused}
        for name in set(PATCH_ONLY) - set(unused):
            settings[name] = {k: v for k, v in settings[name].items() if k not in REFINE_PERFORMANCE_ONLY}
        if "bundle" in settings and not self.bundle.refine_intrinsics:  # runs made before it existed stay valid
            del settings["bundle"]["refine_intrinsics"]
        return settings
