"""The localization recipe on validated inputs: retrieval, features, 3D, query matching, poses,
then the results file, summary.json and the HTML report (each step resumable).

An image that cannot be read is a counted skip, found before anything is computed where its
header tells (`inputs.ImageChecks`, remembered between runs), else when extraction fails: a query
is a failure (its line in the results file is the fallback pose, its reason in summary.json), a
database image is left out of matching and of the triangulated model (listed in summary.json).
Only a run with no readable query, or no readable database image, is an error.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import extract, match
from ..colmap import pycolmap
from ..datasets.formats import read_poses
from ..extractor import D2Extractor
from ..fingerprint import file_fingerprint
from ..paths import resolve_inside
from ..report import write_report_or_warn
from . import LocalizationError, evaluate
from .config import STEP_STAMP, LocalizationConfig, RunPaths, Workers, results_path
from .estimation import QueryLog, QueryResult, Timer, results_name
from .inputs import ImageChecks, StampCache
from .query_refinement import QueryRefiner
from .results import write_results, write_summary
from .retrieval import global_retrieval, write_retrieval
from .scenes import Scene

logger = logging.getLogger(__name__)

UNREADABLE = "unreadable image: "  # starts the failure of a query that cannot be read


@dataclass
class Unreadable:
    """Input images that cannot be used ({name: why}); counted skips, found before or by extraction."""

    queries: dict[str, str] = field(default_factory=dict)
    database: dict[str, str] = field(default_factory=dict)


def check_queries(scene: Scene, checks: ImageChecks) -> dict[str, str]:
    """{query: why it cannot be read} from the image headers; a readable query's known intrinsics
    must be those of its image's size, and at least one query must be readable."""
    unreadable = {}
    for name, camera in scene.queries.items():
        path = resolve_inside(scene.image_dir, name)
        header = checks.check(path)
        if isinstance(header, str):
            unreadable[name] = header
        elif (camera.width, camera.height) != (header.width, header.height):
            raise LocalizationError(f"query {name}: its intrinsics are for a {camera.width}x{camera.height} image, "
                                    f"but {path} is {header.width}x{header.height}")
    require_readable("query", list(scene.queries), unreadable)  # the others: warned after extraction
    return unreadable


def check_images(scene: Scene, names: list[str], checks: ImageChecks) -> dict[str, str]:
    """{name: why it cannot be read} of the images whose header is unusable."""
    found = {name: checks.problem(resolve_inside(scene.image_dir, name)) for name in names}
    return {name: problem for name, problem in found.items() if problem is not None}


def require_readable(kind: str, names: list[str], unreadable: dict[str, str]) -> None:
    """One error line when no image of `names` can be read."""
    if names and all(name in unreadable for name in names):
        examples = "; ".join(unreadable[name] for name in names[:3])
        raise LocalizationError(f"none of the {len(names)} {kind} images can be read, e.g. {examples}")


def warn_unreadable(kind: str, total: int, unreadable: dict[str, str]) -> None:
    """One warning line for the images of a kind that cannot be read (all of them are in summary.json)."""
    if unreadable:
        logger.warning("%d of %d %s images cannot be read and are %s (listed in summary.json), e.g. %s",
                       len(unreadable), total, kind, "counted as failures" if kind == "query" else "left out",
                       "; ".join(list(unreadable.values())[:3]))


def extract_readable(scene: Scene, paths: RunPaths, names: list[str], unreadable: dict[str, str],
                     checks: ImageChecks, config: LocalizationConfig, extractor: D2Extractor,
                     workers: Workers) -> None:
    """Features of the readable `names`; an image extraction cannot read joins `unreadable` (and is
    remembered in `checks`, so that a resume does not try it again)."""
    todo = [name for name in names if name not in unreadable]
    if not todo:
        return  # (extract.main would take an empty list for "every image of the folder")
    stats = {name: checks.stat_of(resolve_inside(scene.image_dir, name)) for name in todo}
    extraction = extract.main(scene.image_dir, paths.features, todo, config=config.extraction,
                              extractor=extractor, executor=workers.executor)
    for name, reason in extraction.failed.items():
        unreadable[name] = reason
        if stats.get(name):
            checks.record_failure(resolve_inside(scene.image_dir, name), reason, stats[name])
    checks.save()


def unreadable_result(name: str, reason: str, retrieved: list[str]) -> QueryResult:
    return QueryResult(name, num_retrieved=len(retrieved), failure=UNREADABLE + reason)


def with_skips(result: QueryResult, retrieved: list[str], unreadable: dict[str, str]) -> QueryResult:
    """A localized query's result with its unreadable retrieved images listed (and named as the
    reason when they were all it had)."""
    skipped = {name: f"{UNREADABLE}{unreadable[name]}" for name in retrieved if name in unreadable}
    if skipped:
        result.skipped_db = {**result.skipped_db, **skipped}
        if len(skipped) == len(retrieved) and not result.success:
            result.failure = f"all {len(retrieved)} retrieved database images are unreadable"
    return result


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
        ground_truth: Path | None, truth: dict[str, pycolmap.Rigid3d] | None, workers: Workers,
        checks: ImageChecks, unreadable_queries: dict[str, str]) -> Path:
    """The five steps on validated inputs, in the locked output folder; extraction, matching and
    pose estimation run on `workers`, and this process writes every file. `checks`: the image
    header checks (those of the queries done: `unreadable_queries`)."""
    preset = scene.preset
    timer = Timer()
    start = time.time()
    stamps = StampCache(paths.input_stamps)
    unreadable = Unreadable(queries=dict(unreadable_queries))
    readable_queries = [q for q in scene.queries if q not in unreadable.queries]
    logger.info("[1/5] Retrieval pairs")
    with timer("retrieval"):
        if retrieval is None:
            unreadable.database.update(check_images(scene, scene.db_names, checks))  # GeM reads every one
            found = global_retrieval(scene.image_dir, readable_queries,
                                     [n for n in scene.db_names if n not in unreadable.database],
                                     paths.global_features, extractor, config.retrieval, k)
            retrieval = {q: found.get(q, []) for q in scene.queries}
    db_needed = scene.db_images_needed({q: retrieval[q] for q in readable_queries})
    unreadable.database.update(check_images(scene, [n for n in db_needed if n not in unreadable.database], checks))
    checks.save()
    require_readable("database", db_needed, unreadable.database)  # before hours of extraction

    logger.info("[2/5] Local features of %d query and %d database images", len(readable_queries), len(db_needed))
    with timer("extract"):
        extract_readable(scene, paths, readable_queries, unreadable.queries, checks, config, extractor, workers)
        require_readable("query", list(scene.queries), unreadable.queries)
        warn_unreadable("query", len(scene.queries), unreadable.queries)
        extract_readable(scene, paths, db_needed, unreadable.database, checks, config, extractor, workers)
        require_readable("database", db_needed, unreadable.database)
        warn_unreadable("database", len(scene.db_names), unreadable.database)
    usable = {q: [n for n in retrieval[q] if n not in unreadable.database]
              for q in scene.queries if q not in unreadable.queries}
    if not any(usable.values()):
        why = (f"their retrieved database images cannot be read, e.g. {next(iter(unreadable.database.values()))}"
               if unreadable.database else "no database image was retrieved")
        raise LocalizationError(f"no query can be matched: {why}")
    write_retrieval(paths.query_pairs, usable)  # the pairs matched: readable images only

    logger.info("[3/5] 3D: %s", scene.source_of_3d)
    scene.prepare(paths, config, timer, stamps, workers, unreadable.database)
    stamps.save()

    logger.info("[4/5] Matching queries with their retrieved images")
    with timer("query_match"):
        match.main(paths.query_pairs, paths.features, paths.query_matches, config.matcher,
                   device=workers.matching_device, executor=workers.executor)

    logger.info("[5/5] Pose estimation")
    settings = {"config": config.as_dict(), "weights": extractor.weights.sha256, "dataset": dataset,
                "sfm": file_fingerprint(paths.sfm / STEP_STAMP) if (paths.sfm / STEP_STAMP).exists() else None}
    inputs = {name: scene.query_inputs(name, refs, stamps) for name, refs in usable.items()}
    stamps.save()
    refiner = (QueryRefiner.for_run(scene.image_dir, config.refine, extractor.model, extractor.device)
               if config.refine.mode != "none" else None)
    with timer("localize"):
        log = QueryLog(paths.pose_log, settings, inputs)
        localized = {r.name: with_skips(r, retrieval[r.name], unreadable.database)
                     for r in scene.localize(paths, usable, config, log, workers, refiner)}
    if refiner is not None:
        refiner.log()
        timer.seconds["refine_queries"] = round(refiner.seconds, 3)  # part of "localize"
    results = [localized[name] if name in localized else unreadable_result(name, unreadable.queries[name],
                                                                           retrieval[name])
               for name in scene.queries]
    results_file = write_results(results_path(paths.output, preset, config, pairs, k), scene, results, retrieval)

    report = None
    if truth is not None:
        report = evaluate.evaluate(read_poses(results_file), truth, evaluate.THRESHOLDS[preset.thresholds],
                                   scene.evaluation_groups(retrieval))
        logger.info("Recall against %s:\n%s", ground_truth, evaluate.format_report(report))
    timer.seconds["total"] = round(time.time() - start, 3)
    write_summary(paths, dataset, root, results_file, scene, results, config, extractor, pairs, k, timer,
                  ground_truth, report, {n: UNREADABLE + r for n, r in unreadable.database.items()})
    write_report_or_warn(paths.output)
    logger.info("Localized %d of %d queries; results in %s", sum(r.success for r in results), len(results),
                results_file)
    return results_file
