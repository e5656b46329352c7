"""Stability check: map again from other strong initial pairs and compare relative rotations with
the model. A model whose poses move with the mapper's starting pair is not determined by its
matches (D2 on the symmetric temple: 10-19 deg median disagreement; kermit and the sample scene
stay under 1 deg).

Kept cheap (it used to cost 4-12x the mapping itself): it is skipped when the cheaper checks have
already flagged the model; a re-run gives up on an unsuitable start pair after one trial per
relaxation round instead of COLMAP's 200 (same result, a fraction of the time) and skips colours;
and a first re-run that registers every view again and agrees within half the limits makes the
second unnecessary.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from ..alignment import model_poses, relative_rotation_errors
from ..colmap import pycolmap
from ..colmap_import import PairStats
from ..colmap_readonly import read_image_ids
from .mapping import best_model
from .reliability import ReliabilityConfig

logger = logging.getLogger(__name__)


def stability_pairs(reconstruction: pycolmap.Reconstruction, pair_stats: list[PairStats], count: int,
                    min_inliers: int, skip: int = 1) -> list[PairStats]:
    """Disjoint strong two-view pairs of registered images to restart the mapper from, skipping the
    `skip` strongest (the incremental mapper's own start is usually near the strongest) and pure
    rotations."""
    registered = set(model_poses(reconstruction))
    chosen, used = [], set()
    for stat in sorted(pair_stats, key=lambda s: -s.num_inliers):
        if (stat.kept and stat.num_inliers >= min_inliers and {stat.name0, stat.name1} <= registered
                and stat.configuration in ("CALIBRATED", "UNCALIBRATED") and not {stat.name0, stat.name1} & used):
            chosen.append(stat)
            used |= {stat.name0, stat.name1}
    return chosen[skip:count + skip]


def rerun_options(options: pycolmap.IncrementalPipelineOptions) -> pycolmap.IncrementalPipelineOptions:
    """Options of a re-run: one initialisation trial per relaxation round (a start pair COLMAP finds
    unsuitable burnt all 200 default trials at each round, for the same result), no colours. Bundle
    adjustment stays as in mapping: refining less often (1 refinement, global BA every 40%) halved
    a run's time but raised Sceaux's disagreement from 0.8 to 4.9 deg max, near the 6 deg limit."""
    options.init_num_trials = 1
    options.extract_colors = False
    options.multiple_models = False
    return options


def stability_check(database: Path, image_dir: Path, work_dir: Path, reconstruction: pycolmap.Reconstruction,
                    pair_stats: list[PairStats], options: pycolmap.IncrementalPipelineOptions,
                    config: ReliabilityConfig, skip: int = 1) -> list[dict[str, object]]:
    """Map again from other initial pairs; relative-rotation disagreement with `reconstruction`."""
    image_ids = {name: image_id for name, (image_id, _) in read_image_ids(database).items()}
    reference, results = model_poses(reconstruction), []
    options = rerun_options(options)
    for stat in stability_pairs(reconstruction, pair_stats, config.stability_runs, config.strong_pair_inliers, skip):
        options.init_image_id1, options.init_image_id2 = image_ids[stat.name0], image_ids[stat.name1]
        other = remap(database, image_dir, work_dir, options, (stat.name0, stat.name1))
        errors = relative_rotation_errors(model_poses(other), reference) if other else np.zeros(0)
        results.append({"initial_pair": [stat.name0, stat.name1],
                        "num_registered": other.num_reg_images() if other else 0,
                        "num_common_pairs": int(len(errors)),
                        "median_deg": float(np.median(errors)) if len(errors) else None,
                        "max_deg": float(errors.max()) if len(errors) else None})
        if clearly_stable(results[-1], reconstruction.num_reg_images(), config):
            break
    return results


def remap(database: Path, image_dir: Path, work_dir: Path, options: pycolmap.IncrementalPipelineOptions,
          pair: tuple[str, str]) -> pycolmap.Reconstruction | None:
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    try:
        return best_model(pycolmap.incremental_mapping(str(database), str(image_dir), str(work_dir), options))
    except (ValueError, RuntimeError) as error:
        logger.warning("Stability run from (%s, %s) failed: %s", *pair, error)
        return None
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def clearly_stable(run: dict[str, object], num_registered: int, config: ReliabilityConfig) -> bool:
    """Every view registered again, and within half the limits: a further re-run would not flag."""
    return (run["num_registered"] >= num_registered and run["num_common_pairs"] >= 3
            and run["median_deg"] <= config.max_stability_median_deg / 2
            and run["max_deg"] <= config.max_stability_deg / 2)


def stability_warnings(results: list[dict[str, object]], config: ReliabilityConfig) -> list[str]:
    warnings = []
    for run in results:
        if run["median_deg"] is None or run["num_common_pairs"] < 3:
            continue
        if run["median_deg"] > config.max_stability_median_deg or run["max_deg"] > config.max_stability_deg:
            warnings.append(f"unstable: mapping again from the pair {tuple(run['initial_pair'])} changes relative "
                            f"rotations by {run['median_deg']:.1f} deg median, {run['max_deg']:.1f} deg max "
                            f"(limits {config.max_stability_median_deg}, {config.max_stability_deg}): the poses are "
                            "not determined by the matches")
    return warnings
