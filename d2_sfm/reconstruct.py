"""Structure-from-Motion with D2-Net features, end to end; pycolmap does all the geometry.

python -m d2_sfm.reconstruct [--images DIR] --output OUT [--weights NAME|PATH] [--multiscale]
    [--max-edge N] [--pairs exhaustive|sequential|retrieval] [--pairs-file FILE] [--num-matched K]
    [--camera-mode auto|single|per_image|per_folder] [--camera-params fx,fy,cx,cy]
    [--refine none|keypoints|keypoints+bundle] [--bundle-intrinsics] [--mapper incremental|global]
    [--executor local|ray] [--overwrite]

Steps (each skipped when its outputs are complete and were made with the same settings, so an
interrupted or repeated run resumes where it stopped; `OUT/steps.json` records them):
  extract   OUT/features.h5     D2-Net keypoints and descriptors (hloc format)
  pairs     OUT/pairs.txt       image pairs to match (hloc format)
  match     OUT/matches.h5      mutual nearest neighbours (hloc format, int32 indices)
  refine    OUT/features-refined.h5  keypoints of match tracks aligned to each track's root by affine
                                Lucas-Kanade on image patches (skipped with --refine none)
  database  OUT/database.db     COLMAP database: cameras, images, (refined) keypoints (+0.5 px), raw matches;
  verify                        two-view geometries by pycolmap, weak pairs removed
                                (per-pair numbers in OUT/database.pairs.json)
  map       OUT/sfm/            best model of pycolmap's incremental mapping, or of its global
                                mapping (GLOMAP; focal lengths first calibrated from the view graph,
                                in a copy of the database, unless all intrinsics are known)
            with --refine keypoints+bundle, then a featuremetric bundle adjustment of the model:
                                every observation of each 3D point aligned to the point's best-
                                reprojecting observation, the ones whose patches do not correlate
                                dropped, poses and points fitted to the aligned positions with each
                                patch's 2x2 information (d2_sfm.refinement.bundle); intrinsics as
                                mapping left them, or with --bundle-intrinsics the self-calibrated
                                cameras' focal length and distortion refined too
            OUT/points.ply, OUT/summary.json, OUT/overview.png (top view); COLMAP's log: OUT/colmap.log

Without --images the embedded sample scene is generated (once) under datasets/sample_scene and
reconstructed, and the camera poses are compared with the known ones after a Sim3 alignment.

A model is flagged UNRELIABLE (status in summary.json, exit code 3) when an image's registration
rests only on weak pairs, when it observes few 3D points, when a focal length left its prior, or
when mapping again from other initial pairs changes the poses (stability check, run when the other
checks pass): D2 features on symmetric, weakly textured objects produce confident but wrong pairs
and ill-determined poses.
Exit codes: 0 model built, 2 nothing could be built (message says why), 3 model flagged unreliable.

The pieces live in `d2_sfm.reconstruction` (layout, pipeline, mapping, reliability, stability,
summary); their public names are importable from here too. This module imports neither torch nor
pycolmap until a run starts, so that --help and argument errors are instant.
"""
from __future__ import annotations

import argparse
import importlib
import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from .cli import (EXIT_UNRELIABLE, add_extraction_arguments, add_refine_argument, extraction_config_from_args, given,
                  refine_config_from_args, run_cli)
from .errors import ConfigError
from .executors import add_executor_arguments, executor_config_from_args
from .reconstruction import MAPPERS

if TYPE_CHECKING:
    from .colmap import pycolmap
    from .reconstruction.pipeline import ReconstructionConfig

logger = logging.getLogger(__name__)

SAMPLE_SCENE_DIR = Path("datasets/sample_scene")

# Public names of d2_sfm.reconstruction, resolved on first use (PEP 562): importing this module
# stays free of torch and pycolmap.
_EXPORTS = {
    ".reconstruction.layout": ("STEPS", "OutputLayout", "ReconstructionError", "StepLog", "image_files_key",
                               "remove_outputs"),
    ".reconstruction.pipeline": ("Pipeline", "ReconstructionConfig", "check_intrinsics_sizes", "main",
                                 "validate_inputs"),
    ".reconstruction.mapping": ("MapperConfig", "best_model", "global_mapper_options", "global_mapping",
                                "incremental_mapping", "map_images", "mapper_options"),
    ".reconstruction.reliability": ("RADIAL_MODELS", "Assessment", "ReliabilityConfig", "assess_model",
                                    "camera_warnings", "initial_cameras", "strongly_connected_core"),
    ".reconstruction.stability": ("clearly_stable", "rerun_options", "stability_check", "stability_pairs",
                                  "stability_warnings"),
    ".reconstruction.summary": ("ReconstructionSummary", "features_weights", "ground_truth_report",
                                "model_statistics", "no_pairs_message", "pair_counts", "too_few_images_message"),
    ".configs": ("ExtractionConfig",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> object:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name], __package__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULE_OF})


def sample_scene(root: Path = SAMPLE_SCENE_DIR) -> tuple[Path, dict[str, pycolmap.Rigid3d]]:
    """Generate the embedded sample scene if missing; its image folder and ground-truth poses."""
    from .datasets.sample_scene import GROUND_TRUTH_FILE, IMAGE_DIR, read_ground_truth, write_sample_scene

    write_sample_scene(root)
    views = read_ground_truth(Path(root) / GROUND_TRUTH_FILE)
    return Path(root) / IMAGE_DIR, {name: view.cam_from_world for name, view in views.items()}


# ----------------------------------------------------------------------------------------------
# CLI (defaults: None where config_from_args fills in the configs' own)


def build_parser() -> argparse.ArgumentParser:
    from . import colmap_db  # camera and verification options (pycolmap, no torch)

    parser = argparse.ArgumentParser(prog="python -m d2_sfm.reconstruct", description=__doc__.split("\n")[0],
                                     epilog="Exit codes: 0 model built, 2 nothing could be built, "
                                            "3 model flagged unreliable (see summary.json warnings).")
    parser.add_argument("--images", type=Path, help="image folder (recursive); default: the embedded sample "
                                                    f"scene, generated under {SAMPLE_SCENE_DIR}")
    parser.add_argument("--output", type=Path, help="output folder (default: outputs/<image folder name>)")
    parser.add_argument("--overwrite", action="store_true", help="remove this pipeline's files in OUT first")
    parser.add_argument("--ground-truth", type=Path, help="reference poses to compare with: ground_truth.txt "
                        "(name qw qx qy qz tx ty tz ...), Middlebury *_par.txt, or Bundler bundle.out")
    group = parser.add_argument_group("pairs")
    group.add_argument("--pairs", choices=("exhaustive", "sequential", "retrieval"),
                       help="which images to match (default: exhaustive)")
    group.add_argument("--pairs-file", type=Path, help="use this pairs file (hloc format) instead")
    group.add_argument("--num-matched", type=int, help="retrieval: neighbours")
    group.add_argument("--window", type=int, help="sequential: neighbours")
    group = parser.add_argument_group("keypoint refinement")
    add_refine_argument(group, "matched keypoints before the database")
    group.add_argument("--bundle-intrinsics", action="store_true",
                       help="with keypoints+bundle: the featuremetric bundle adjustment also refines the focal "
                            "length and distortion of self-calibrated cameras (default: as mapping left them)")
    group = parser.add_argument_group("mapping")
    group.add_argument("--mapper", choices=MAPPERS,
                       help="incremental (default): pycolmap's incremental mapper; global: GLOMAP's rotation "
                            "averaging and global positioning (pycolmap's global_mapping)")
    group.add_argument("--refine-known-intrinsics", action="store_true",
                       help="let bundle adjustment refine intrinsics given by --camera-params/--intrinsics")
    group.add_argument("--num-threads", type=int,
                       help="bundle-adjustment threads of the mapper (default 1: repeatable results; -1: all cores)")
    parser.add_argument("--import-d2net", action="store_true",
                        help="use the official <image>.d2-net feature files next to the images (converted once "
                             "into OUT/features.h5) instead of extracting features")
    add_extraction_arguments(parser)
    add_executor_arguments(parser)
    colmap_db.add_camera_arguments(parser)
    colmap_db.add_verification_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> ReconstructionConfig:
    from . import colmap_db
    from .reconstruction.pipeline import ReconstructionConfig

    default = ReconstructionConfig()
    pairs_config = replace(default.pairs, mode="file" if args.pairs_file else args.pairs or default.pairs.mode,
                           **given(num_matched=args.num_matched, window=args.window))
    refine = refine_config_from_args(args)
    if args.bundle_intrinsics:
        if not refine.bundle_adjusts:
            raise ConfigError(f"--bundle-intrinsics needs --refine keypoints+bundle (got --refine {refine.mode})")
        refine = replace(refine, bundle=replace(refine.bundle, refine_intrinsics=True))
    mapper = replace(default.mapper, refine_known_intrinsics=args.refine_known_intrinsics,
                     **given(method=args.mapper, num_threads=args.num_threads))
    return ReconstructionConfig(
        weights=args.weights, extraction=extraction_config_from_args(args), pairs=pairs_config,
        pairs_file=args.pairs_file, refine=refine, camera=colmap_db.camera_config_from_args(args),
        verification=colmap_db.verification_config_from_args(args), mapper=mapper,
        device=args.device, import_d2net=args.import_d2net, executor=executor_config_from_args(args))


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .weights import check_known

    check_known(args.weights)  # a mistyped --weights is reported before torch loads
    config = config_from_args(args)
    from .alignment import read_ground_truth_file
    from .images import list_images
    from .reconstruction.pipeline import main

    ground_truth = None
    image_dir = args.images
    if image_dir is None:
        image_dir, ground_truth = sample_scene()
        logger.info("No --images: reconstructing the embedded sample scene in %s", image_dir)
    if args.ground_truth:
        ground_truth = read_ground_truth_file(args.ground_truth, list_images(image_dir))
    output = args.output or Path("outputs") / Path(image_dir).resolve().name
    summary = main(image_dir, output, config, args.overwrite, ground_truth=ground_truth)
    print("\n".join(summary.lines()))
    return EXIT_UNRELIABLE if summary.status == "unreliable" else 0


if __name__ == "__main__":
    raise SystemExit(run_cli(cli))
