"""Pipeline: visual localization with D2-Net features on Aachen Day-Night (v1.0, v1.1) and InLoc.

python -m d2_sfm.localize --dataset aachen|aachen_v1_1|inloc|kapture [--root DIR] [--output OUT]
                          [--pairs FILE] [--num-retrieved K] [--num-covisible K]
                          [--covisibility-clustering] [--ransac-max-error PX] [--ground-truth FILE]
                          [--refine none|keypoints|keypoints+bundle] [--weights NAME|PATH] [--multiscale] [--max-edge N] ...
                          [--executor local|ray] [--ray-address ADDR] [--ray-gpus-per-task G]

The recipe (each step resumable; rerunning continues where it stopped):
1. retrieval: `--pairs` (e.g. hloc's NetVLAD lists, `query db` per line, best first; the first K
   per query are used) or our own GeM global descriptor of D2-Net's dense map (`d2_sfm.pairs`);
2. D2 features of the database and query images (`d2_sfm.extract`; InLoc: only the retrieved
   cutouts);
3. 3D. Aachen: pair covisible database images (the reference model's points), match them, with
   `--refine keypoints` refine their keypoints (`d2_sfm.refine`, OUT/features-db-refined.h5), and
   triangulate D2 points with the reference poses held fixed (`d2_sfm.triangulate`; with
   `--refine keypoints+bundle` the points then get a featuremetric bundle adjustment, poses fixed,
   `d2_sfm.refinement.bundle`). InLoc: the
   cutouts' XYZcut scans, nothing to build;
4. match each query with its retrieved database images (`d2_sfm.match`);
5. 2D-3D correspondences (Aachen: through the triangulated model, optionally per covisibility
   cluster; InLoc: through XYZcut), with `--refine keypoints` each correspondence's query keypoint
   aligned to its database observation (`localization.query_refinement`), and pose by pycolmap
   with the query's known intrinsics (LO-RANSAC + refinement); then the results file (`name qw qx
   qy qz tx ty tz`, cam_from_world, one line per query, basenames, ready for
   visuallocalization.net) and summary.json; with ground
   truth (`--ground-truth`, or the synthetic datasets' `ground_truth/queries.txt`), the
   benchmark's recall at its thresholds.
Every input (dataset files, --pairs, --ground-truth) is parsed before any feature is computed; the
output folder is locked for the run (a concurrent run into it fails at once); the triangulated
model records the digests of the dataset files and database images it was built from, and every
pose the digests of its query image, intrinsics, retrieval list (and, InLoc, cutouts): a resume
redoes exactly what changed, saying so in one log line. COLMAP's log: OUT/colmap.log.
With `--executor ray`, extraction, matching and per-query pose estimation run as Ray tasks (this
process reads the inputs and writes every file, as locally; the results are the same).
A query that cannot be localized still gets a line (Aachen: the pose of its best retrieved database
image, as hloc; InLoc: the identity), and is listed as a failure, with the reason, in summary.json.
An image that cannot be read (empty, not an image by its header, no permission: found before
anything is computed; or undecodable: found by extraction) is a counted skip, not an error: a query
is such a failure, a database image is left out of matching and of the triangulated model and listed
under `skipped_database_images` in summary.json (one warning line each); only a run left with no
readable query or no readable database image stops, with one line. A resume reads no image again
(their checks are kept in OUT/image-checks.json by size and time) and a replaced image is used. An
image that an Aachen or kapture dataset lists but whose file is missing is refused, in one line,
when the dataset is opened.
"""
from __future__ import annotations

import argparse
import importlib
import logging
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .executors import ExecutorConfig, add_executor_arguments, check_ray_available, executor_config_from_args
from .localization import LocalizationError
from .localization.config import (PRESETS, SYNTHETIC_GROUND_TRUTH, DatasetPreset, LocalizationConfig, RunPaths,
                                  Workers, ransac_threshold, require_dataset_folder, results_path)

if TYPE_CHECKING:
    from .extractor import D2Extractor

logger = logging.getLogger(__name__)

__all__ = ["PRESETS", "DatasetPreset", "LocalizationConfig", "RunPaths", "build_parser", "cli", "config_from_args",
           "main", "ransac_threshold", "results_path"]

# Names of the chain's modules kept importable from here (tests and scripts use them), imported on
# first use: torch and pycolmap load only when a run starts, so --help, argument errors and a
# missing dataset answer at once.
LAZY_NAMES = {"open_scene": "scenes", "triangulation_options": "scenes", "top_k_retrieval": "retrieval",
              "write_results": "results"}


def __getattr__(name: str) -> object:
    if name not in LAZY_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".localization.{LAZY_NAMES[name]}", __package__), name)


def main(dataset: str, root: Path | None = None, output: Path | None = None, pairs: Path | None = None,
         config: LocalizationConfig | None = None, weights: str | None = None,
         ground_truth: Path | None = None, device: str = "cpu", extractor: D2Extractor | None = None,
         executor: ExecutorConfig | None = None) -> Path:
    """Localize every query of `dataset` at `root`; returns the results file (summary.json beside it).

    Every input (dataset files, the pairs file, the ground truth) is read and checked before any
    feature is computed; the output folder is locked for the whole run (a second run into it
    fails at once), and COLMAP's log goes to OUT/colmap.log only while this runs. `executor`: where
    extraction, matching and pose estimation run (default: this process; or a Ray cluster), with
    the same files either way."""
    if dataset not in PRESETS:
        raise LocalizationError(f"unknown dataset {dataset!r}: expected one of {', '.join(PRESETS)}")
    preset = PRESETS[dataset]
    root = Path(root or preset.root)
    require_dataset_folder(dataset, root)
    executor = executor or ExecutorConfig()
    check_ray_available(executor)
    # the run's own modules, imported once the inputs are known to exist (they load torch and pycolmap)
    from .colmap_log import colmap_log_to
    from .datasets.formats import read_pairs, read_poses
    from .extractor import D2Extractor
    from .localization.chain import check_ground_truth, check_queries, run
    from .localization.inputs import ImageChecks
    from .localization.retrieval import top_k_retrieval
    from .localization.scenes import open_scene
    from .locking import output_lock

    config = config or LocalizationConfig()
    paths = RunPaths(Path(output or Path("outputs") / dataset))
    scene = open_scene(dataset, root)
    k = config.num_retrieved or preset.num_retrieved
    listed_pairs = read_pairs(pairs) if pairs is not None else None
    if ground_truth is None and (root / SYNTHETIC_GROUND_TRUTH).is_file():
        ground_truth = root / SYNTHETIC_GROUND_TRUTH
    truth = read_poses(ground_truth) if ground_truth is not None else None
    if truth is None and getattr(scene, "ground_truth", None):  # kapture: query/sensors/trajectories.txt
        ground_truth, truth = scene.ground_truth_file, scene.ground_truth
    checks = ImageChecks(paths.image_checks)  # saved by the run, in the locked output folder
    unreadable_queries = check_queries(scene, checks)
    if truth is not None:
        check_ground_truth(scene, ground_truth, truth, root)
    retrieval = (top_k_retrieval(listed_pairs, list(scene.queries), scene.db_names, k, pairs)
                 if listed_pairs is not None else None)
    if extractor is None:
        extractor = D2Extractor(weights, config.extraction, device)
    config = replace(config, extraction=extractor.config)  # a given extractor brings its own settings
    workers = Workers(executor, str(extractor.device))
    with output_lock(paths.output), colmap_log_to(paths.colmap_log):
        return run(scene, dataset, root, paths, pairs, retrieval, k, config, extractor, ground_truth, truth,
                   workers, checks, unreadable_queries)


# ----------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    from .cli import add_extraction_arguments, add_refine_argument

    default = {f.name: f.default for f in fields(LocalizationConfig)}  # the plain ones, without making the rest
    parser = argparse.ArgumentParser(prog="python -m d2_sfm.localize", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(PRESETS), required=True)
    parser.add_argument("--root", type=Path, help="dataset folder (default: datasets/aachen, "
                                                  "datasets/aachen_v1.1, datasets/inloc or datasets/kapture; "
                                                  "kapture: mapping/ and query/ kapture folders)")
    parser.add_argument("--output", type=Path, help="output folder (default: outputs/<dataset>)")
    parser.add_argument("--pairs", type=Path, help="retrieval pairs 'query db' per line, best first (e.g. "
                                                   "hloc's pairs-query-netvlad50.txt); default: our GeM retrieval")
    parser.add_argument("--num-retrieved", type=int, default=default["num_retrieved"],
                        help="database images per query (default: Aachen 50, InLoc 40)")
    parser.add_argument("--num-covisible", type=int, default=default["num_covisible"],
                        help="Aachen: covisible database pairs per image for triangulation")
    parser.add_argument("--covisibility-clustering", action="store_true",
                        help="Aachen: estimate a pose per cluster of covisible retrieved images, keep the best")
    parser.add_argument("--ransac-max-error", type=float, default=default["ransac_max_error"],
                        help="RANSAC threshold in query pixels (default: Aachen 12 px, InLoc 48 px, "
                             "scaled for queries smaller than 1600 / 4032 px)")
    parser.add_argument("--ground-truth", type=Path,
                        help="query poses in the results format, to report the benchmark's recall")
    parser.add_argument("--ratio-threshold", type=float, default=None,
                        help="matcher: Lowe's ratio (default: the matcher's, mutual nearest neighbours only)")
    add_refine_argument(parser, "database keypoints before triangulation, query keypoints before PnP")
    add_extraction_arguments(parser)
    add_executor_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> LocalizationConfig:
    if args.num_retrieved is not None and args.num_retrieved < 1:
        raise LocalizationError("--num-retrieved must be at least 1")
    from .cli import extraction_config_from_args, refine_config_from_args
    from .configs import MatcherConfig

    matcher = MatcherConfig() if args.ratio_threshold is None else MatcherConfig(ratio_threshold=args.ratio_threshold)
    refine = refine_config_from_args(args)
    return LocalizationConfig(num_retrieved=args.num_retrieved, num_covisible=args.num_covisible,
                              covisibility_clustering=args.covisibility_clustering,
                              ransac_max_error=args.ransac_max_error,
                              extraction=extraction_config_from_args(args), matcher=matcher, refine=refine)


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    require_dataset_folder(args.dataset, args.root or PRESETS[args.dataset].root)  # before torch loads
    from .weights import check_known

    check_known(args.weights)
    main(args.dataset, args.root, args.output, args.pairs, config_from_args(args), args.weights,
         args.ground_truth, args.device, executor=executor_config_from_args(args))
    return 0


if __name__ == "__main__":
    from .cli import run_cli

    raise SystemExit(run_cli(cli))
