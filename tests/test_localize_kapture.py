"""End to end: `d2_sfm.localize` on a kapture localization dataset (mapping/ + query/), made from
the synthetic Aachen look-alike by `write_kapture_from_synthetic`, with the query ground truth in
query/sensors/trajectories.txt (picked up by localize without --ground-truth).

Small on purpose (about 15-20 s of CPU): 10 database images and 3 day + 1 night queries at
400 x 300, features at max_edge 400, the dataset's ground-truth covisibility pairs (translated to
kapture names) as retrieval. Measured with hed_vgg16 (seeds 0 / 1 / 2): day 3/3, 3/3, 2/3 within
(0.25 m, 2 deg), all day queries within (5 m, 10 deg); this test uses seed 0.
"""
from __future__ import annotations

import json

import pytest

from d2_sfm import localize
from d2_sfm.datasets import synthetic
from d2_sfm.datasets.formats import read_poses
from d2_sfm.datasets.kapture_writer import kapture_names_of_synthetic, translate_pairs, write_kapture_from_synthetic

pytestmark = pytest.mark.slow

MIN_DAY_FINEST = 0.6  # "most day queries" (3 queries: at least 2)


def test_localize_reads_a_kapture_dataset(tmp_path, hed_extractor_factory):
    source = synthetic.main("aachen_v1_1", tmp_path / "aachen", num_db=10, num_queries=4, image_size=(400, 300))
    root = write_kapture_from_synthetic(source, tmp_path / "kapture")
    pairs = translate_pairs(source / "pairs" / "pairs-query-gt-covis10.txt", tmp_path / "pairs.txt",
                            kapture_names_of_synthetic(source))
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}

    results = localize.main("kapture", root, tmp_path / "out", pairs, localize.LocalizationConfig(num_retrieved=10),
                            extractor=hed_extractor_factory(max_edge=400))

    summary = json.loads((results.parent / "summary.json").read_text())
    assert summary["ground_truth"] == str(root / "query" / "sensors" / "trajectories.txt")
    assert set(read_poses(results)) == set(read_poses(source / "ground_truth" / "queries.txt"))  # basenames
    assert summary["num_queries"] == 4
    groups = summary["evaluation"]["groups"]
    assert groups["day"]["num_queries"] == 3 and groups["night"]["num_queries"] == 1
    assert groups["day"]["recall"][0] >= MIN_DAY_FINEST, groups["day"]
    assert groups["day"]["recall"][2] == 1.0, groups["day"]
    assert summary["timings_s"]["triangulate"] > 0
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before  # the dataset is only read
