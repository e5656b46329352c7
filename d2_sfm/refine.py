"""Pipeline step: keypoint adjustment of matched D2 keypoints (Pixel-Perfect SfM's KA).

python -m d2_sfm.refine --images DIR --features F.h5 --matches M.h5 --pairs P.txt --output R.h5
                        [--method patches|features] [--patch-size 17] [--patch-bound 4]
                        [--layers conv3_3,conv1_2] [--bounds 1,2] [--device cuda] [--overwrite]

Tentative tracks are built from the raw matches of the listed pairs (at most one keypoint per image,
strongest matches first); in each track every keypoint but the root moves, within a bound, until it
sees what the root sees. Method `patches` (default): affine Lucas-Kanade alignment of normalised
grey image patches, the warp started from the local affine shape of neighbouring correspondences
(no network pass); method `features`: translation-only alignment of dense early-layer D2 backbone
features (the measured comparison is in RefineConfig's comment). The output is a features file
with the same images and datasets as the input, keypoints refined, everything else copied; its
items keep the input's `feature_id` (the matches still index the same keypoints) and record the
input features, the matches file and the settings they were refined from (resume redoes the file
when any of them changes).
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .cli import run_cli
from .configs import DENSE_LAYERS, PatchConfig, RefineConfig
from .configs import REFINE_METHODS as METHODS
from .configs import REFINE_MODES as MODES
from .errors import ConfigError

if TYPE_CHECKING:  # torch: imported when a run starts, so that --help and argument errors are instant
    from .refinement.features_file import RefineSummary

__all__ = ["METHODS", "MODES", "PatchConfig", "RefineConfig", "build_parser", "cli", "config_from_args", "main"]


def main(image_dir: Path, features: Path, matches: Path, pairs: Path | Sequence[tuple[str, str]], output: Path,
         config: RefineConfig = RefineConfig(), device: str = "cpu", overwrite: bool = False) -> RefineSummary:
    """Refine the matched keypoints of `features` into `output` (see the module docstring)."""
    from .refinement.features_file import refine_features_file  # noqa: PLC0415  (torch)

    return refine_features_file(image_dir, features, matches, pairs, output, config, device, overwrite)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m d2_sfm.refine", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="image folder the features were extracted from")
    parser.add_argument("--features", type=Path, required=True, help="features HDF5 (hloc format)")
    parser.add_argument("--matches", type=Path, required=True, help="raw matches HDF5 (hloc format)")
    parser.add_argument("--pairs", type=Path, required=True, help="pairs file whose matches form the tracks")
    parser.add_argument("--output", type=Path, required=True, help="refined features HDF5")
    parser.add_argument("--mode", choices=("keypoints",), default="keypoints")  # the bundle needs a model
    parser.add_argument("--method", choices=METHODS, default=RefineConfig.method,
                        help="patches: affine Lucas-Kanade on image patches; features: dense D2 backbone features")
    parser.add_argument("--patch-size", type=int, default=PatchConfig.size, help="method patches: patch side (px)")
    parser.add_argument("--patch-bound", type=float, default=PatchConfig.bound,
                        help="method patches: largest move per axis (px of the resized image)")
    parser.add_argument("--layers", default=",".join(RefineConfig.layers),
                        help=f"method features: dense levels, coarse to fine, from {', '.join(DENSE_LAYERS)}")
    parser.add_argument("--bounds", default=",".join(str(b) for b in RefineConfig.bounds),
                        help="method features: largest move per axis at each level, in that level's cells")
    parser.add_argument("--epipolar-threshold", type=float, default=RefineConfig.epipolar_threshold,
                        help="matches farther from their pair's epipolar lines (px of the resized image) do not "
                             "join tracks; 0: all tentative matches do")
    parser.add_argument("--max-edge", type=int, default=RefineConfig.max_edge)
    parser.add_argument("--iterations", type=int, default=RefineConfig.iterations, help="method features: LM steps")
    parser.add_argument("--weights", help="method features: D2 weights for the dense features "
                                          "(default: the features file's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming")
    return parser


def config_from_args(args: argparse.Namespace) -> RefineConfig:
    try:
        bounds = tuple(float(b) for b in args.bounds.split(","))
    except ValueError:
        raise ConfigError(f"--bounds must be comma-separated numbers, got {args.bounds!r}") from None
    patch = replace(PatchConfig(), size=args.patch_size, bound=args.patch_bound)
    return RefineConfig(mode=args.mode, method=args.method, patch=patch, layers=tuple(args.layers.split(",")),
                        bounds=bounds, max_edge=args.max_edge or None, iterations=args.iterations,
                        epipolar_threshold=args.epipolar_threshold or None,
                        weights=args.weights)


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    main(args.images, args.features, args.matches, args.pairs, args.output, config_from_args(args), args.device,
         args.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(cli))
