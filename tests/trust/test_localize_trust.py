"""`d2_sfm.localize` inputs, resume, locking and process state (issue: Trust, items 2, 3, 4, 9).

Tiny synthetic datasets (6 database images, 2 queries, 160 x 120 px) keep each run to seconds.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pycolmap
import pytest

from d2_sfm import localize
from d2_sfm.cli import run_cli
from d2_sfm.datasets import DatasetError
from d2_sfm.datasets import synthetic
from d2_sfm.datasets.aachen import AachenDataset, read_database_ids

SIZE = (160, 120)
CONFIG = localize.LocalizationConfig(num_retrieved=3)


@pytest.fixture(scope="module")
def extractor(hed_extractor_factory):
    return hed_extractor_factory(max_edge=160)


def make_dataset(root: Path, layout: str = "aachen_v1_1", num_db: int = 6) -> Path:
    return synthetic.main(layout, root, num_db=num_db, num_queries=2, image_size=SIZE)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else b"", p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


@pytest.mark.slow
def test_the_dataset_folder_is_never_modified_even_a_wal_database(tmp_path, extractor):
    """aachen.db in WAL mode, in a folder whose name needs URI quoting: a full localize run leaves
    every file (bytes and mtime) and the listing as they were; no -wal/-shm appears."""
    root = make_dataset(tmp_path / "my data #1?", "aachen")
    with sqlite3.connect(root / "aachen.db") as connection:
        connection.execute("PRAGMA journal_mode=WAL")
    connection.close()
    for leftover in root.glob("aachen.db-*"):
        leftover.unlink()
    before = snapshot(root)
    assert set(read_database_ids(root / "aachen.db")) == set(AachenDataset.from_root(root).db_names)
    localize.main("aachen", root, tmp_path / "out", None, CONFIG, extractor=extractor)
    assert snapshot(root) == before


def test_a_database_that_is_not_sqlite_is_one_named_error(tmp_path):
    path = tmp_path / "aachen.db"
    path.write_bytes(b"not a database at all" * 10)
    with pytest.raises(DatasetError, match="aachen.db"):
        read_database_ids(path)


@pytest.mark.slow
def test_a_changed_query_image_and_changed_model_are_redone_and_said(tmp_path, extractor, caplog):
    root = make_dataset(tmp_path / "ds")
    out = tmp_path / "out"
    first = localize.main("aachen_v1_1", root, out, None, CONFIG, extractor=extractor)
    first_text = first.read_text()
    query = root / "images_upright" / json.loads((out / "summary.json").read_text())["queries"][0]["name"]
    cv2.imwrite(str(query), cv2.imread(str(query))[:, ::-1].copy())  # the user replaced the photo
    with caplog.at_level(logging.INFO):
        localize.main("aachen_v1_1", root, out, None, CONFIG, extractor=extractor)
    assert "1 queries changed" in caplog.text and "up to date: skipped" in caplog.text
    # the reference model changes: the triangulated model is rebuilt, every query redone
    model_dir = root / "3D-models" / "aachen_v_1_1"
    model = pycolmap.Reconstruction(str(model_dir))
    image = model.images[min(model.images)]
    frame = model.frames[image.frame_id]
    frame.rig_from_world = pycolmap.Rigid3d(frame.rig_from_world.rotation,
                                            frame.rig_from_world.translation + np.array([0.05, 0, 0]))
    for name in ("cameras.bin", "images.bin", "points3D.bin"):
        (model_dir / name).unlink()
    model.write(str(model_dir))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = localize.main("aachen_v1_1", root, out, None, CONFIG, extractor=extractor)
    assert "out of date (dataset files changed)" in caplog.text
    assert "Settings changed" in caplog.text  # the pose step sees the new model
    assert again == first and first_text  # same file name, rewritten from the new model


def test_inputs_are_checked_before_any_feature_is_computed(tmp_path, extractor):
    root = make_dataset(tmp_path / "ds")
    bad_truth = tmp_path / "truth.txt"
    bad_truth.write_text("query.jpg 1 0 0\n")
    with pytest.raises(DatasetError, match="truth.txt"):
        localize.main("aachen_v1_1", root, tmp_path / "out", None, CONFIG, ground_truth=bad_truth,
                      extractor=extractor)
    bad_pairs = tmp_path / "pairs.txt"
    bad_pairs.write_text("only-one-name\n")
    with pytest.raises(DatasetError, match="pairs.txt"):
        localize.main("aachen_v1_1", root, tmp_path / "out", bad_pairs, CONFIG, extractor=extractor)
    assert not (tmp_path / "out" / "features.h5").exists()


def test_a_missing_dataset_says_where_it_comes_from_in_one_line(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        code = run_cli(localize.cli, ["--dataset", "aachen", "--root", str(tmp_path / "nowhere"),
                                      "--output", str(tmp_path / "out")])
    assert code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert "visuallocalization.net" in errors[0]
    assert "python -m d2_sfm.datasets.synthetic --layout aachen" in errors[0]


def test_a_second_localize_into_a_locked_output_fails_at_once(tmp_path):
    """A concurrent run holds the output folder: the second gets exit code 2 naming it."""
    root = make_dataset(tmp_path / "ds")
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from d2_sfm.locking import output_lock\n"
        f"with output_lock({str(out)!r}):\n    print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.run([sys.executable, "-m", "d2_sfm.localize", "--dataset", "aachen_v1_1", "--root",
                                 str(root), "--output", str(out), "--weights", "hed_vgg16", "--max-edge", "160"],
                                capture_output=True, text=True, timeout=120,
                                env={**os.environ, "D2_SFM_OFFLINE": "1"})
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2, second.stderr
    assert "another d2_sfm process" in second.stderr and str(out) in second.stderr
    assert "Traceback" not in second.stderr
    assert not (out / "features.h5").exists()


def test_colmap_logging_is_restored_and_the_named_log_exists(tmp_path, extractor):
    flags = ("logtostderr", "alsologtostderr", "stderrthreshold", "minloglevel")
    before = {flag: getattr(pycolmap.logging, flag) for flag in flags}
    root = make_dataset(tmp_path / "ds")
    for _ in range(2):  # twice in the same second: glog's timestamped names would collide
        localize.main("aachen_v1_1", root, tmp_path / "out", None, CONFIG, extractor=extractor)
    assert {flag: getattr(pycolmap.logging, flag) for flag in flags} == before
    log = tmp_path / "out" / "colmap.log"
    assert log.is_file() and log.stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "out").glob("colmap.log*")) == ["colmap.log"]


def test_an_unusable_xyzcut_is_a_counted_skip(tmp_path, extractor):
    """InLoc: one cutout's XYZcut transposed (W, H, 3): warned, skipped, listed in summary.json."""
    root = synthetic.main("inloc", tmp_path / "ds", num_db=2, num_queries=2, image_size=SIZE)
    mats = sorted(root.glob("database/cutouts/*/*/*.jpg.mat"))
    from d2_sfm.datasets.inloc import read_xyzcut, write_xyzcut
    write_xyzcut(mats[0], read_xyzcut(mats[0]).transpose(1, 0, 2))
    results = localize.main("inloc", root, tmp_path / "out", None, localize.LocalizationConfig(num_retrieved=40),
                            extractor=extractor)
    summary = json.loads((results.parent / "summary.json").read_text())
    bad = mats[0].relative_to(root).as_posix()[: -len(".mat")]
    assert bad in summary["skipped_database_images"]
    assert summary["num_queries"] == 2
