"""The localization pipeline: retrieval lists, results file, CLI, errors (fast tests)."""
from __future__ import annotations

import logging

import numpy as np
import pycolmap
import pytest

from d2_sfm import localize
from d2_sfm.cli import run_cli
from d2_sfm.datasets import DatasetError
from d2_sfm.datasets.formats import read_poses
from d2_sfm.extractor import ExtractionConfig
from d2_sfm.localization import LocalizationError
from d2_sfm.localization.estimation import QueryResult
from d2_sfm.matching import MatcherConfig

QUERIES = ["query/day/a.jpg", "query/night/b.jpg"]
DB = ["db/1.jpg", "db/2.jpg", "db/3.jpg"]


def test_top_k_keeps_the_file_order_and_limit(tmp_path):
    pairs = [("query/day/a.jpg", "db/3.jpg"), ("query/day/a.jpg", "db/1.jpg"), ("query/day/a.jpg", "db/2.jpg"),
             ("db/2.jpg", "query/night/b.jpg")]  # a reversed line still counts
    retrieval = localize.top_k_retrieval(pairs, QUERIES, DB, 2, tmp_path / "pairs.txt")
    assert retrieval == {"query/day/a.jpg": ["db/3.jpg", "db/1.jpg"], "query/night/b.jpg": ["db/2.jpg"]}


def test_top_k_warns_about_unknown_names_and_queries_without_pairs(tmp_path, caplog):
    pairs = [("query/day/a.jpg", "db/1.jpg"), ("query/day/a.jpg", "db/99.jpg")]
    with caplog.at_level(logging.WARNING):
        retrieval = localize.top_k_retrieval(pairs, QUERIES, DB, 5, tmp_path / "pairs.txt")
    assert retrieval["query/night/b.jpg"] == []
    assert "db/99.jpg" in caplog.text and "query/night/b.jpg" in caplog.text


def test_pairs_file_matching_no_query_is_an_error_naming_it(tmp_path):
    with pytest.raises(LocalizationError, match="pairs.txt: no line pairs a query"):
        localize.top_k_retrieval([("x.jpg", "db/1.jpg")], QUERIES, DB, 5, tmp_path / "pairs.txt")


class FakeScene:
    preset = localize.PRESETS["aachen"]
    queries = {name: None for name in QUERIES}

    def fallback_pose(self, result, retrieval):
        return pycolmap.Rigid3d(pycolmap.Rotation3d(), np.array([1.0, 2.0, 3.0]))


def test_results_file_has_every_query_with_basenames(tmp_path):
    pose = pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([0.1, 0.2, 0.3])), np.array([4.0, 5.0, 6.0]))
    results = [QueryResult("query/day/a.jpg", pose, 50), QueryResult("query/night/b.jpg", failure="no pose")]
    path = localize.write_results(tmp_path / "results.txt", FakeScene(), results, {})
    lines = path.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["a.jpg", "b.jpg"]
    assert all(len(line.split()) == 8 for line in lines)
    poses = read_poses(path)
    assert np.allclose(poses["a.jpg"].matrix(), pose.matrix())
    assert np.allclose(poses["b.jpg"].translation, [1, 2, 3])  # the failure's fallback


def test_results_name_encodes_the_settings(tmp_path):
    preset = localize.PRESETS["aachen_v1_1"]
    name = localize.results_path(tmp_path, preset, localize.LocalizationConfig(), None, 50).name
    assert name == "Aachen-v1.1_d2sfm_d2-ss_gem50.txt"
    multiscale = localize.LocalizationConfig(extraction=ExtractionConfig(multiscale=True))
    name = localize.results_path(tmp_path, preset, multiscale, tmp_path / "pairs-query-netvlad50.txt", 30).name
    assert name == "Aachen-v1.1_d2sfm_d2-ms_pairs-query-netvlad50-top30.txt"


def test_ransac_threshold_follows_the_query_size():
    config = localize.LocalizationConfig()
    small = pycolmap.Camera(model="SIMPLE_PINHOLE", width=640, height=480, params=[500, 320, 240])
    full = pycolmap.Camera(model="SIMPLE_PINHOLE", width=4032, height=3024, params=[3136, 2016, 1512])
    assert localize.ransac_threshold(localize.PRESETS["inloc"], config, full) == 48.0  # hloc's value
    assert localize.ransac_threshold(localize.PRESETS["aachen"], config, small) == pytest.approx(4.8)
    fixed = localize.LocalizationConfig(ransac_max_error=7.0)
    assert localize.ransac_threshold(localize.PRESETS["aachen"], fixed, small) == 7.0


def test_cli_defaults_are_the_api_defaults():
    args = localize.build_parser().parse_args(["--dataset", "aachen"])
    assert localize.config_from_args(args) == localize.LocalizationConfig(
        extraction=ExtractionConfig(), matcher=MatcherConfig())
    args = localize.build_parser().parse_args(["--dataset", "inloc", "--num-retrieved", "20", "--multiscale",
                                              "--covisibility-clustering", "--max-edge", "640"])
    config = localize.config_from_args(args)
    assert config.num_retrieved == 20 and config.covisibility_clustering and config.extraction.multiscale
    assert config.extraction.max_edge == 640


def test_missing_dataset_files_are_named(tmp_path):
    with pytest.raises(DatasetError, match="images_upright"):
        localize.open_scene("aachen_v1_1", tmp_path)
    with pytest.raises(DatasetError, match="query/iphone7"):
        localize.open_scene("inloc", tmp_path)


def test_cli_reports_a_missing_dataset_in_one_line(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        code = run_cli(localize.cli, ["--dataset", "aachen", "--root", str(tmp_path / "nowhere"),
                                      "--output", str(tmp_path / "out")])
    assert code == 2
    assert str(tmp_path / "nowhere") in caplog.text
