"""Dataset files: aachen.db read strictly read-only, InLoc XYZcut shapes, COLMAP's log shim
(issue: Trust, items 7 and 9). Small files written by the tests; no feature extraction."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pycolmap
import pytest
import scipy.io

from d2_sfm.colmap_log import colmap_log_to
from d2_sfm.datasets import DatasetError
from d2_sfm.datasets.aachen import read_database_ids
from d2_sfm.datasets.inloc import check_xyzcut_size, read_xyzcut, write_xyzcut


def make_database(path: Path, wal: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with pycolmap.Database.open(str(path)) as db:
        for i in (1, 2):
            camera = pycolmap.Camera(model="PINHOLE", width=64, height=48, params=[50, 50, 32, 24], camera_id=i)
            db.write_camera(camera, use_camera_id=True)
            db.write_image(pycolmap.Image(name=f"db/{i}.jpg", camera_id=i, image_id=i), use_image_id=True)
    if wal:
        connection = sqlite3.connect(path)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.close()
    for leftover in path.parent.glob(path.name + "-*"):
        leftover.unlink()
    return path


@pytest.mark.parametrize("folder", ["plain", "with space", "what?", "hash#tag", "per%cent"])
@pytest.mark.parametrize("wal", [False, True])
def test_aachen_db_is_read_without_touching_its_folder(tmp_path, folder, wal):
    path = make_database(tmp_path / folder / "aachen.db", wal)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in path.parent.iterdir()}
    assert read_database_ids(path) == {"db/1.jpg": (1, 1), "db/2.jpg": (2, 2)}
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in path.parent.iterdir()} == before


def test_aachen_db_without_an_images_table_is_named(tmp_path):
    path = tmp_path / "aachen.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE other (x)")
    connection.commit()
    connection.close()
    with pytest.raises(DatasetError, match="aachen.db"):
        read_database_ids(path)


@pytest.mark.parametrize("value, problem", [
    (np.zeros((4, 5)), "shape"),
    (np.zeros((4, 5, 2)), "shape"),
    (np.zeros((0, 5, 3)), "shape"),
    (np.array([["a", "b"]]), "shape"),
    (np.full((2, 2, 3), 1 + 2j), "real numbers"),
])
def test_malformed_xyzcut_is_one_named_error(tmp_path, value, problem):
    path = tmp_path / "cut.jpg.mat"
    scipy.io.savemat(str(path), {"XYZcut": value})
    with pytest.raises(DatasetError, match=problem) as error:
        read_xyzcut(path)
    assert "cut.jpg.mat" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("content", [b"", b"MATLAB 5.0 MAT-file" + b"\0" * 200, b"\x89HDF\r\n\x1a\n" + b"x" * 500])
def test_garbage_mat_files_are_one_line(tmp_path, content):
    path = tmp_path / "cut.jpg.mat"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match="cut.jpg.mat") as error:
        read_xyzcut(path)
    assert "\n" not in str(error.value)


def test_xyzcut_must_cover_its_cutout(tmp_path):
    xyz = np.zeros((48, 64, 3))
    check_xyzcut_size(xyz, (64, 48), tmp_path / "a.mat")  # same size
    check_xyzcut_size(np.zeros((24, 32, 3)), (64, 48), tmp_path / "a.mat")  # a scaled copy
    with pytest.raises(DatasetError, match="a.mat"):
        check_xyzcut_size(xyz.transpose(1, 0, 2), (64, 48), tmp_path / "a.mat")  # transposed
    write_xyzcut(tmp_path / "b.jpg.mat", xyz)
    assert read_xyzcut(tmp_path / "b.jpg.mat").shape == (48, 64, 3)


def test_colmap_log_shim_restores_state_and_writes_exactly_the_named_file(tmp_path):
    flags = ("logtostderr", "alsologtostderr", "stderrthreshold", "minloglevel")
    before = {flag: getattr(pycolmap.logging, flag) for flag in flags}
    for round_ in range(2):  # twice within a second: glog's own names would collide
        with colmap_log_to(tmp_path / "out" / "colmap.log") as outer:
            pycolmap.logging.info(f"outer {round_}")
            with colmap_log_to(tmp_path / "out" / "sfm" / "colmap.log") as inner:
                pycolmap.logging.info(f"inner {round_}")
                assert pycolmap.logging.logtostderr is False
            pycolmap.logging.info(f"outer again {round_}")
    assert {flag: getattr(pycolmap.logging, flag) for flag in flags} == before
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == \
        ["out/colmap.log", "out/sfm/colmap.log"]
    assert outer.path == (tmp_path / "out" / "colmap.log").absolute()
    text = outer.path.read_text()
    assert all(f"outer {r}" in text and f"outer again {r}" in text for r in range(2)) and "inner" not in text
    assert all(f"inner {r}" in inner.path.read_text() for r in range(2))


@pytest.mark.parametrize("content", [b"query/day/a.jpg PINHOLE 64 48 50 50 32 24\nquery/day/\xff.jpg x\n",
                                     "query/day/a.jpg PINHOLE 64 48 50 50 32 24\n".encode("utf-16")])
def test_text_lists_in_other_encodings_are_one_line_naming_file(tmp_path, content):
    from d2_sfm.datasets.formats import read_intrinsics_list, read_pairs, read_poses
    from d2_sfm.errors import D2SfmError
    path = tmp_path / "list.txt"
    path.write_bytes(content)
    for reader in (read_intrinsics_list, read_pairs, read_poses):
        with pytest.raises(D2SfmError, match="list.txt") as error:
            reader(path)
        assert "\n" not in str(error.value)
