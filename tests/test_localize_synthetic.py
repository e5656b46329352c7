"""End to end: `d2_sfm.localize` on synthetic datasets written in the exact Aachen / InLoc layouts.

The datasets come from `d2_sfm.datasets.synthetic` (640 x 480 renderings of photo-textured scenes
with known poses; night queries darkened, colour-shifted and noisy). Features use the offline
hed_vgg16 weights. Retrieval: the datasets' `pairs/pairs-query-gt-covis10.txt`, passed like a user's
NetVLAD list (hloc style); the Aachen v1.0 run uses our own GeM retrieval instead. Aachen v1.1 runs
the default refinement (keypoints+bundle); the InLoc and v1.0 runs, about layouts and resume, skip
it (the refined paths of every layout: test_localize_refine.py).
"""
from __future__ import annotations

import json
import logging

import pytest

from d2_sfm import localize
from d2_sfm.datasets import synthetic
from d2_sfm.datasets.formats import read_poses
from d2_sfm.refine import RefineConfig

pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)

GT_PAIRS = "pairs/pairs-query-gt-covis10.txt"
# Shares of queries within the finest benchmark threshold that these runs must reach: the task's
# targets, day >= 90 %, night >= 70 %. Measured with the offline hed_vgg16 weights (finest
# threshold) on the synthetic Aachen v1.1 (24 db images in a mapping sequence along the street,
# facade-facing queries; seed 0 = these tests): seeds 0, 1, 2 each day 8/8 (worst 0.19 m, 1.1 deg),
# night 3/4 (the night misses have few inliers: 0.28-0.98 m). InLoc 8/8 (errors < 0.1 m, < 0.6 deg).
MIN_FINEST = {"aachen_v1_1": {"day": 0.9, "night": 0.7}, "inloc": {"all": 0.9}}
MIN_COARSEST = 0.9


@pytest.fixture(scope="module")
def extractor(hed_extractor_factory):
    return hed_extractor_factory(max_edge=640)


def run(layout, tmp_path, extractor, use_gt_pairs=True, refine="keypoints+bundle", **dataset_options):
    root = synthetic.main(layout, tmp_path / "dataset", **dataset_options)
    pairs = root / GT_PAIRS if use_gt_pairs else None
    config = localize.LocalizationConfig(num_retrieved=10, refine=RefineConfig(mode=refine))
    results = localize.main(layout, root, tmp_path / "outputs", pairs, config, extractor=extractor)
    summary = json.loads((results.parent / "summary.json").read_text())
    logger.info("%s: %s", layout, json.dumps(summary["evaluation"]["groups"]))
    return root, results, summary


def check_results_file(root, results, summary):
    """One line per query (basenames, results format), failures included."""
    truth = read_poses(root / "ground_truth" / "queries.txt")
    assert set(read_poses(results)) == set(truth)
    assert summary["num_queries"] == len(truth)
    assert set(summary["failures"]) == {q["name"] for q in summary["queries"] if q["cam_from_world"] is None}
    assert summary["weights"]["name"] == "hed_vgg16"
    assert all(q["num_inliers"] >= 0 and q["num_correspondences"] >= q["num_inliers"] for q in summary["queries"])


def test_aachen_v1_1(tmp_path, extractor):
    root, results, summary = run("aachen_v1_1", tmp_path, extractor)
    check_results_file(root, results, summary)
    groups = summary["evaluation"]["groups"]
    for group, minimum in MIN_FINEST["aachen_v1_1"].items():
        assert groups[group]["recall"][0] >= minimum, (group, groups[group])
    assert groups["all"]["recall"][2] >= MIN_COARSEST
    assert summary["timings_s"]["triangulate"] > 0


def test_inloc(tmp_path, extractor):
    root, results, summary = run("inloc", tmp_path, extractor, refine="none")  # refined: test_localize_refine
    check_results_file(root, results, summary)
    groups = summary["evaluation"]["groups"]
    assert set(groups) == {"all", "DUC1", "DUC2"}
    assert groups["all"]["recall"][0] >= MIN_FINEST["inloc"]["all"], groups["all"]


def test_aachen_v1_0_runs_end_to_end_and_resumes(tmp_path, extractor):
    """The NVM path with our own retrieval, on a tiny dataset; a second run redoes nothing."""
    root, results, summary = run("aachen", tmp_path, extractor, use_gt_pairs=False, refine="none", num_db=8,
                                 num_queries=3)
    check_results_file(root, results, summary)
    assert summary["settings"]["retrieval_source"].startswith("GeM")
    outputs = tmp_path / "outputs"
    written = {path: path.stat().st_mtime_ns for path in outputs.rglob("*.h5")}
    assert written
    again = localize.main("aachen", root, outputs, None,
                          localize.LocalizationConfig(num_retrieved=10, refine=RefineConfig(mode="none")),
                          extractor=extractor)
    assert again == results
    assert {path: path.stat().st_mtime_ns for path in outputs.rglob("*.h5")} == written  # nothing redone
