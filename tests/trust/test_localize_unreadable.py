"""`d2_sfm.localize` with images that cannot be read: a counted skip, never an error after extraction.

A query that cannot be read is a failure listed in summary.json (its results line is the fallback
pose), a database image that cannot be read is left out of matching and of the triangulated model
and listed under `skipped_database_images`; only a run left with nothing readable stops, with one
line. A resume redoes nothing and reports the same skips; a replaced image is used.
Tiny synthetic datasets (160 x 120 px) keep each run to seconds.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from d2_sfm import localize
from d2_sfm.cli import run_cli
from d2_sfm.colmap import pycolmap
from d2_sfm.configs import RefineConfig
from d2_sfm.datasets import synthetic
from d2_sfm.datasets.formats import read_poses
from d2_sfm.h5io import list_h5_names
from d2_sfm.localization import LocalizationError

SIZE = (160, 120)
# 8 px: the default threshold scaled to these 160 px queries (1.2 px) leaves too few inliers
FAST = localize.LocalizationConfig(num_retrieved=8, ransac_max_error=8.0, refine=RefineConfig(mode="none"))


@pytest.fixture(scope="module")
def extractor(hed_extractor_factory):
    return hed_extractor_factory(max_edge=160)


def make_dataset(root: Path, layout: str, num_db: int = 8, num_queries: int = 3) -> Path:
    return synthetic.main(layout, root, num_db=num_db, num_queries=num_queries, image_size=SIZE)


def gt_pairs(root: Path) -> Path:
    """The dataset's retrieval list from the ground truth (as a user's NetVLAD list)."""
    return next((root / "pairs").glob("pairs-query-gt-covis*.txt"))


def query_paths(root: Path) -> list[Path]:
    return sorted((root / "images_upright" / "query").rglob("*.jpg"))


def undecodable(path: Path) -> bytes:
    """A JPEG whose header is sound (size, end marker) but that libjpeg refuses (8-bit precision
    byte set to 7): found by extraction, not by the header check. Returns the original bytes."""
    original = path.read_bytes()
    data = bytearray(original)
    sof = data.find(b"\xff\xc0")
    assert sof > 0
    data[sof + 4] = 7
    path.write_bytes(bytes(data))
    return original


def summary_of(results: Path) -> dict:
    return json.loads((results.parent / "summary.json").read_text())


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.rglob("*") if p.suffix in (".h5", ".bin", ".jsonl")}


def test_an_unreadable_query_is_a_counted_failure_and_used_once_replaced(tmp_path, extractor):
    """Aachen v1.0 (NVM), our GeM retrieval: a query of garbage bytes is found from its header
    before anything is computed, is a failure with its reason, the others are localized; a resume
    redoes nothing; the query replaced by its image is localized."""
    root = make_dataset(tmp_path / "ds", "aachen")
    bad = query_paths(root)[0]
    name = bad.relative_to(root / "images_upright").as_posix()
    original = bad.read_bytes()
    bad.write_bytes(b"\x00garbage, not an image" * 20)
    out = tmp_path / "out"
    results = localize.main("aachen", root, out, None, FAST, extractor=extractor)
    summary = summary_of(results)
    assert summary["num_queries"] == 3 and summary["num_localized"] == 2
    assert list(summary["failures"]) == [name]
    assert summary["failures"][name].startswith("unreadable image: ") and str(bad) in summary["failures"][name]
    assert set(read_poses(results)) == {p.name for p in query_paths(root)}  # a line for every query
    assert name not in list_h5_names(out / "features.h5")

    before = mtimes(out)
    again = localize.main("aachen", root, out, None, FAST, extractor=extractor)
    assert again == results and mtimes(out) == before  # nothing redone
    assert summary_of(again)["failures"] == summary["failures"]

    bad.write_bytes(original)
    fixed = summary_of(localize.main("aachen", root, out, None, FAST, extractor=extractor))
    assert fixed["num_localized"] == 3 and fixed["failures"] == {}


def test_an_undecodable_database_image_is_left_out_of_the_model(tmp_path, extractor):
    """Aachen v1.1 (COLMAP model), given pairs, the default refinement (database keypoints and
    points adjusted, query keypoints refined: all read database images): a database image that
    fails to decode is skipped, listed, has no 3D points, and the run goes on; a
    resume redoes nothing (not even the failed decode); replaced, it gets its 3D points."""
    root = make_dataset(tmp_path / "ds", "aachen_v1_1")
    bad = sorted((root / "images_upright" / "db").glob("*.jpg"))[3]
    name = bad.relative_to(root / "images_upright").as_posix()
    original = undecodable(bad)
    config = localize.LocalizationConfig(num_retrieved=8, ransac_max_error=8.0)  # refine: keypoints+bundle
    out = tmp_path / "out"
    results = localize.main("aachen_v1_1", root, out, gt_pairs(root), config, extractor=extractor)
    summary = summary_of(results)
    assert list(summary["skipped_database_images"]) == [name]
    reason = summary["skipped_database_images"][name]
    assert reason.startswith("unreadable image: ") and "is corrupt" in reason and str(bad) in reason
    # the run went on: poses from the 7 other images (fewer at 160 px without this central one)
    assert summary["num_localized"] >= 1 and not any("unreadable" in f for f in summary["failures"].values())
    assert all(name not in q["db_used"] for q in summary["queries"])
    model = pycolmap.Reconstruction(str(out / "sfm_d2"))
    image = next(im for im in model.images.values() if im.name == name)
    assert image.num_points3D == 0 and model.num_points3D() > 0

    before = mtimes(out)
    again = localize.main("aachen_v1_1", root, out, gt_pairs(root), config, extractor=extractor)
    assert mtimes(out) == before  # the failed image was not decoded again, the model not rebuilt
    assert summary_of(again)["skipped_database_images"] == summary["skipped_database_images"]

    bad.write_bytes(original)
    fixed = summary_of(localize.main("aachen_v1_1", root, out, gt_pairs(root), config, extractor=extractor))
    assert fixed["skipped_database_images"] == {} and fixed["num_localized"] >= summary["num_localized"]
    image = next(im for im in pycolmap.Reconstruction(str(out / "sfm_d2")).images.values() if im.name == name)
    assert image.num_points3D > 0


def test_an_unreadable_cutout_is_a_counted_skip(tmp_path, extractor):
    """InLoc, a pairs file naming every cutout: a cutout cut short is left out of every query that
    retrieved it (listed per query and in summary.json); the queries are still localized."""
    root = make_dataset(tmp_path / "ds", "inloc", num_db=2, num_queries=2)
    cutouts = [p.relative_to(root).as_posix() for p in sorted(root.glob("database/cutouts/**/*.jpg"))]
    queries = [p.relative_to(root).as_posix() for p in sorted((root / "query").rglob("*.*"))]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("".join(f"{q} {c}\n" for q in queries for c in cutouts))
    bad = root / cutouts[0]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    results = localize.main("inloc", root, tmp_path / "out", pairs, localize.LocalizationConfig(
        num_retrieved=len(cutouts), refine=RefineConfig(mode="none")), extractor=extractor)
    summary = summary_of(results)
    assert list(summary["skipped_database_images"]) == [cutouts[0]]
    assert "truncated" in summary["skipped_database_images"][cutouts[0]]
    assert len(summary["queries"]) == 2
    assert all(cutouts[0] in q["skipped_db"] and cutouts[0] not in q["db_used"] for q in summary["queries"])
    assert summary["num_localized"] == 2


def test_nothing_readable_is_one_line_before_any_work(tmp_path, extractor, caplog):
    """No readable query (cut short, empty, garbage): exit code 2 with one line naming a file, and
    nothing computed; no readable database image: one LocalizationError, nothing extracted. (A
    missing image is refused with the dataset, when it is opened.)"""
    root = make_dataset(tmp_path / "ds", "aachen_v1_1", num_db=4, num_queries=3)
    queries = query_paths(root)
    originals = [q.read_bytes() for q in queries]
    queries[0].write_bytes(originals[0][:200])
    queries[1].write_bytes(b"")
    queries[2].write_bytes(b"GIF89a not supported")
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR):
        code = run_cli(localize.cli, ["--dataset", "aachen_v1_1", "--root", str(root), "--output", str(out),
                                      "--weights", "hed_vgg16", "--max-edge", "160"])
    assert code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert "none of the 3 query images can be read" in errors[0] and str(queries[0]) in errors[0]
    assert not (out / "features.h5").exists()

    for query, data in zip(queries, originals):
        query.write_bytes(data)
    for image in (root / "images_upright" / "db").glob("*.jpg"):
        image.write_bytes(b"")
    with pytest.raises(LocalizationError, match="none of the 4 database images can be read, e.g. image .* empty"):
        localize.main("aachen_v1_1", root, out, gt_pairs(root), FAST, extractor=extractor)
    assert not (out / "features.h5").exists()
