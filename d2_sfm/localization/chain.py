"""The localization recipe on validated inputs: retrieval, features, 3D, query matching, poses,
then the results file, summary.json and the HTML report (each step resumable)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from .. import extract, match
from ..colmap import pycolmap
from ..datasets.formats import read_poses
from ..extractor import D2Extractor
from ..fingerprint import file_fingerprint
from ..images import read_image_header
from ..paths import resolve_inside
from ..report import write_report_or_warn
from . import LocalizationError, evaluate
from .config import STEP_STAMP, LocalizationConfig, RunPaths, Workers, results_path
from .estimation import QueryLog, Timer, results_name
from .inputs import StampCache
from .query_refinement import QueryRefiner
from .results import write_results, write_summary
from .retrieval import global_retrieval, write_retrieval
from .scenes import Scene

logger = logging.getLogger(__name__)


def check_query_sizes(scene: Scene) -> None:
    """A query's known intrinsics must be those of its image's size (read from the header)."""
    for name, camera in scene.queries.items():
        header = read_image_header(resolve_inside(scene.image_dir, name))
        if (camera.width, camera.height) != (header.width, header.height):
            raise LocalizationError(f"query {name}: its intrinsics are for a {camera.width}x{camera.height} image, "
                                    f"but {resolve_inside(scene.image_dir, name)} is {header.width}x{header.height}")


def check_ground_truth(scene: Scene, ground_truth: Path, truth: dict[str, pycolmap.Rigid3d], root: Path) -> None:
    """The ground truth must name some of the queries; those it lacks are left out (one warning)."""
    without = [name for name in scene.queries if results_name(name) not in truth]
    if len(without) == len(scene.queries):
        raise LocalizationError(f"ground truth {ground_truth} names none of the {len(scene.queries)} queries of "
                                f"{root} (e.g. {results_name(without[0])}): is it another dataset's?")
    if without:
        logger.warning("%s has no pose for %d of %d queries (e.g. %s): they are left out of the evaluation",
                       ground_truth, len(without), len(scene.queries), results_name(without[0]))


def run(scene: Scene, dataset: str, root: Path, paths: RunPaths, pairs: Path | None,
        retrieval: dict[str, list[str]] | None, k: int, config: LocalizationConfig, extractor: D2Extractor,
        ground_truth: Path | None, truth: dict[str, pycolmap.Rigid3d] | None, workers: Workers) -> Path:
    """The five steps on validated inputs, in the locked output folder; extraction, matching and
    pose estimation run on `workers`, and this process writes every file."""
    preset = scene.preset
    timer = Timer()
    start = time.time()
    stamps = StampCache(paths.input_stamps)
    logger.info("[1/5] Retrieval pairs")
    with timer("retrieval"):
        if retrieval is None:
            retrieval = global_retrieval(scene.image_dir, list(scene.queries), scene.db_names,
                                         paths.global_features, extractor, config.retrieval, k)
        write_retrieval(paths.query_pairs, retrieval)
    db_needed = scene.db_images_needed(retrieval)

    logger.info("[2/5] Local features of %d database and %d query images", len(db_needed), len(scene.queries))
    with timer("extract"):
        extraction = extract.main(scene.image_dir, paths.features, db_needed + list(scene.queries),
                                  config=config.extraction, extractor=extractor, executor=workers.executor)
    if extraction.failed:
        raise LocalizationError(f"{len(extraction.failed)} images could not be read, e.g. "
                                + "; ".join(f"{n}: {r}" for n, r in list(extraction.failed.items())[:3]))

    logger.info("[3/5] 3D: %s", scene.source_of_3d)
    scene.prepare(paths, config, timer, stamps, workers)
    stamps.save()

    logger.info("[4/5] Matching queries with their retrieved images")
    with timer("query_match"):
        match.main(paths.query_pairs, paths.features, paths.query_matches, config.matcher,
                   device=workers.matching_device, executor=workers.executor)

    logger.info("[5/5] Pose estimation")
    settings = {"config": config.as_dict(), "weights": extractor.weights.sha256, "dataset": dataset,
                "sfm": file_fingerprint(paths.sfm / STEP_STAMP) if (paths.sfm / STEP_STAMP).exists() else None}
    inputs = {name: scene.query_inputs(name, retrieval.get(name, []), stamps) for name in scene.queries}
    stamps.save()
    refiner = (QueryRefiner.for_run(scene.image_dir, config.refine, extractor.model, extractor.device)
               if config.refine.mode != "none" else None)
    with timer("localize"):
        log = QueryLog(paths.pose_log, settings, inputs)
        results = scene.localize(paths, retrieval, config, log, workers, refiner)
    if refiner is not None:
        refiner.log()
        timer.seconds["refine_queries"] = round(refiner.seconds, 3)  # part of "localize"
    results_file = write_results(results_path(paths.output, preset, config, pairs, k), scene, results, retrieval)

    report = None
    if truth is not None:
        report = evaluate.evaluate(read_poses(results_file), truth, evaluate.THRESHOLDS[preset.thresholds],
                                   scene.evaluation_groups(retrieval))
        logger.info("Recall against %s:\n%s", ground_truth, evaluate.format_report(report))
    timer.seconds["total"] = round(time.time() - start, 3)
    write_summary(paths, dataset, root, results_file, scene, results, config, extractor, pairs, k, timer,
                  ground_truth, report)
    write_report_or_warn(paths.output)
    localized = sum(r.success for r in results)
    logger.info("Localized %d of %d queries; results in %s", localized, len(results), results_file)
    return results_file
