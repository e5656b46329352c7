"""What a localization run leaves: the results file (one pose per query, the benchmark's format)
and summary.json (settings, failures, timings, recall)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..atomic import write_json
from ..datasets.formats import write_poses
from . import LocalizationError
from .config import LocalizationConfig, RunPaths, by_threshold
from .estimation import QueryResult, Timer, results_name

if TYPE_CHECKING:
    from ..extractor import D2Extractor
    from .scenes import Scene


def write_results(path: Path, scene: Scene, results: list[QueryResult], retrieval: dict[str, list[str]]) -> Path:
    """Every query, in dataset order; failures get the scene's fallback pose."""
    by_name = {r.name: r for r in results}
    poses = {}
    for name in scene.queries:
        result = by_name[name]
        pose = result.cam_from_world
        if pose is None:
            pose = scene.fallback_pose(result, retrieval.get(name, []))
        key = results_name(name)
        if key in poses:
            raise LocalizationError(f"two queries share the basename {key!r}: the results file needs unique names")
        poses[key] = pose
    return write_poses(path, poses)


def write_summary(paths: RunPaths, dataset: str, root: Path, results_file: Path, scene: Scene,
                  results: list[QueryResult], config: LocalizationConfig, extractor: D2Extractor,
                  pairs: Path | None, k: int, timer: Timer, ground_truth: Path | None, report: dict | None,
                  unreadable_db: dict[str, str] | None = None) -> Path:
    """`unreadable_db`: database images left out of the whole run ({name: why}), listed with the
    images each query skipped."""
    return write_json(paths.summary, {
        "dataset": dataset,
        "root": str(root),
        "results": str(results_file),
        "weights": {"name": extractor.weights.name, "sha256": extractor.weights.sha256},
        "settings": {**config.as_dict(), "num_retrieved": k,
                     "retrieval_source": str(pairs) if pairs else "GeM global descriptor of D2-Net's dense map",
                     "ransac_max_error_px": {f"{threshold:g}": len(queries) for threshold, queries
                                             in by_threshold(scene.queries, scene.preset, config).items()}},
        "num_queries": len(results),
        "num_localized": sum(r.success for r in results),
        "failures": {r.name: r.failure for r in results if not r.success},
        "skipped_database_images": {**(unreadable_db or {}),
                                    **{db: reason for r in results for db, reason in r.skipped_db.items()}},
        "queries": [r.to_json() for r in results],
        "timings_s": timer.seconds,
        "ground_truth": str(ground_truth) if ground_truth else None,
        "evaluation": report,
    })
