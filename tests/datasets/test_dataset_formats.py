"""Intrinsics lists, results files and pairs files: round trips and errors naming file and line."""
from __future__ import annotations

import re
from pathlib import Path

import cv2  # noqa: F401  (before pycolmap)
import numpy as np
import pycolmap
import pytest

from d2_sfm.datasets import DatasetError
from d2_sfm.datasets.formats import (UnsafeNameError, read_intrinsics_list, read_pairs, read_poses,
                                     rigid_from_qt, write_intrinsics_list, write_pairs, write_poses)
from d2_sfm.errors import D2SfmError
from d2_sfm.paths import UnsafePathError


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_intrinsics_list_reads_models_comments_and_blank_lines(tmp_path):
    path = write(tmp_path, "q.txt", "# comment\n\nquery/day/a.jpg SIMPLE_RADIAL 1600 1200 1469.2 800 600 -0.0353\n"
                                    "query/night/b.jpg PINHOLE 640 480 500 501 320 240\n")
    cameras = read_intrinsics_list(path)
    assert list(cameras) == ["query/day/a.jpg", "query/night/b.jpg"]
    a = cameras["query/day/a.jpg"]
    assert (a.model.name, a.width, a.height) == ("SIMPLE_RADIAL", 1600, 1200)
    np.testing.assert_allclose(a.params, [1469.2, 800, 600, -0.0353])


@pytest.mark.parametrize("line, message", [
    ("a.jpg SIMPLE_RADIAL 1600 1200 1469.2 800 600", "takes 4 parameters, got 3"),
    ("a.jpg FOO 1600 1200 1 2 3", "unknown COLMAP camera model 'FOO'"),
    ("a.jpg PINHOLE 16x0 1200 1 2 3 4", "image width must be an integer"),
    ("a.jpg PINHOLE 1600 1200 1 2 three 4", "must be numbers"),
    ("a.jpg PINHOLE 1600", "expected 'name MODEL WIDTH HEIGHT params...'"),
])
def test_intrinsics_list_errors_name_file_and_line(tmp_path, line, message):
    path = write(tmp_path, "bad.txt", "# header\nok.jpg SIMPLE_PINHOLE 10 10 5 5 5\n" + line + "\n")
    with pytest.raises(DatasetError, match=re.escape(f"{path}:3") + ".*" + re.escape(message)):
        read_intrinsics_list(path)


def test_intrinsics_list_rejects_duplicates_and_escaping_names(tmp_path):
    dup = write(tmp_path, "dup.txt", "a.jpg SIMPLE_PINHOLE 10 10 5 5 5\na.jpg SIMPLE_PINHOLE 10 10 5 5 5\n")
    with pytest.raises(DatasetError, match="dup.txt:2.*listed twice"):
        read_intrinsics_list(dup)
    escape = write(tmp_path, "esc.txt", "../a.jpg SIMPLE_PINHOLE 10 10 5 5 5\n")
    with pytest.raises(UnsafeNameError, match="esc.txt:1"):
        read_intrinsics_list(escape)


def test_intrinsics_list_round_trip_is_exact_and_hloc_parsable(tmp_path):
    cameras = {"db/1.jpg": pycolmap.Camera(model="SIMPLE_RADIAL", width=640, height=480,
                                           params=[512.123456789, 320, 240, -0.01]),
               "db/2.jpg": pycolmap.Camera(model="OPENCV", width=10, height=20, params=np.arange(8) / 7)}
    path = write_intrinsics_list(tmp_path / "intr.txt", cameras)
    back = read_intrinsics_list(path)
    for name, cam in cameras.items():
        assert back[name].model == cam.model and back[name].width == cam.width
        assert back[name].params.tolist() == cam.params.tolist()
    for line in path.read_text().splitlines():  # hloc: line.strip("\n").split(" "), no comments
        fields = line.split(" ")
        assert len(fields) == 4 + len(cameras[fields[0]].params)


def test_missing_file_error_names_it_and_what_was_expected(tmp_path):
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "nope.txt")) + ".*expected"):
        read_poses(tmp_path / "nope.txt")


def test_poses_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    poses = {}
    for i in range(5):
        q = rng.normal(size=4)
        poses[f"IMG_{i}.JPG"] = rigid_from_qt(q / np.linalg.norm(q), rng.normal(size=3) * 10)
    path = write_poses(tmp_path / "results.txt", poses)
    back = read_poses(path)
    assert list(back) == list(poses)
    for name, pose in poses.items():
        np.testing.assert_allclose(back[name].matrix(), pose.matrix(), atol=1e-12)
    fields = path.read_text().splitlines()[0].split(" ")
    assert len(fields) == 8 and fields[0] == "IMG_0.JPG"


def test_poses_quaternion_is_wxyz(tmp_path):
    # 90 degrees about z: w = x = 0? no: w = cos 45, z = sin 45
    path = write(tmp_path, "r.txt", f"a.jpg {np.cos(np.pi / 4)} 0 0 {np.sin(np.pi / 4)} 1 2 3\n")
    pose = read_poses(path)["a.jpg"]
    np.testing.assert_allclose(pose.rotation.matrix(), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(pose.translation, [1, 2, 3])


@pytest.mark.parametrize("line, message", [
    ("b.jpg 1 0 0 0 1 2", "expected 8 fields"),
    ("b.jpg 1 0 0 0 1 2 x", "must be numbers"),
    ("b.jpg 0 0 0 0 1 2 3", "zero length"),
    ("a.jpg 1 0 0 0 1 2 3", "has two poses"),
    ("b.jpg 1 0 0 0 1 2 nan", "must be finite"),
])
def test_poses_errors_name_file_and_line(tmp_path, line, message):
    path = write(tmp_path, "res.txt", "a.jpg 1 0 0 0 0 0 0\n" + line + "\n")
    with pytest.raises(DatasetError, match=re.escape(f"{path}:2") + ".*" + message):
        read_poses(path)


def test_pairs_round_trip_and_hloc_layout(tmp_path):
    pairs = [("query/a.jpg", "db/1.jpg"), ("query/a.jpg", "db/2.jpg")]
    path = write_pairs(tmp_path / "pairs.txt", pairs)
    assert path.read_text() == "query/a.jpg db/1.jpg\nquery/a.jpg db/2.jpg"
    assert read_pairs(path) == pairs


@pytest.mark.parametrize("line", ["/etc/passwd db/1.jpg", "q.jpg ../outside.jpg", "q.jpg db/../../x.jpg",
                                  "q.jpg C:/x.jpg"])
def test_pairs_reject_names_escaping_the_root(tmp_path, line):
    path = write(tmp_path, "pairs.txt", "q.jpg db/1.jpg\n" + line + "\n")
    with pytest.raises(UnsafeNameError, match=re.escape(f"{path}:2")) as info:
        read_pairs(path)
    assert isinstance(info.value, (DatasetError, UnsafePathError, D2SfmError, ValueError))


def test_pairs_field_count_and_image_root(tmp_path):
    bad = write(tmp_path, "bad.txt", "q.jpg db/1.jpg extra\n")
    with pytest.raises(DatasetError, match="bad.txt:1.*two image names"):
        read_pairs(bad)
    (tmp_path / "images" / "db").mkdir(parents=True)
    (tmp_path / "images" / "q.jpg").write_bytes(b"x")
    (tmp_path / "images" / "db" / "1.jpg").write_bytes(b"x")
    good = write(tmp_path, "good.txt", "q.jpg db/1.jpg\nq.jpg db/2.jpg\n")
    with pytest.raises(DatasetError, match="good.txt:2.*'db/2.jpg' not found"):
        read_pairs(good, image_root=tmp_path / "images")
    assert read_pairs(good)[1] == ("q.jpg", "db/2.jpg")
