"""InLoc: XYZcut .mat files, alignment transformation files, cutout names, query focal rule."""
from __future__ import annotations

import re

import cv2  # noqa: F401  (before pycolmap)
import numpy as np
import pytest
import scipy.io

from d2_sfm.datasets import DatasetError
from d2_sfm.datasets.inloc import (INLOC_QUERY_FOCAL, cutout_name, inloc_query_camera, inloc_query_focal,
                                   parse_cutout_name, read_query_floors, read_transformation, read_transformations,
                                   read_xyzcut, write_query_floors, write_transformation, write_xyzcut)


def random_pose(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    pose = np.eye(4)
    pose[:3, :3] = q * np.sign(np.linalg.det(q))
    pose[:3, 3] = rng.normal(size=3) * 20
    return pose


def test_xyzcut_round_trip_keeps_nan_and_float64(tmp_path):
    xyz = np.random.default_rng(0).normal(size=(6, 8, 3))
    xyz[1, 2] = np.nan
    path = write_xyzcut(tmp_path / "DUC_cutout_024_0_0.jpg.mat", xyz)
    back = read_xyzcut(path)
    assert back.dtype == np.float64 and back.shape == (6, 8, 3)
    np.testing.assert_array_equal(back, xyz)
    assert scipy.io.loadmat(str(path))["XYZcut"].dtype == np.float64  # what hloc loads


def test_xyzcut_errors(tmp_path):
    wrong = tmp_path / "wrong.mat"
    scipy.io.savemat(str(wrong), {"RGBcut": np.zeros((2, 2, 3))})
    with pytest.raises(DatasetError, match=re.escape(str(wrong)) + ".*XYZcut"):
        read_xyzcut(wrong)
    garbage = tmp_path / "garbage.mat"
    garbage.write_bytes(b"not a mat file at all")
    with pytest.raises(DatasetError, match=re.escape(str(garbage))):
        read_xyzcut(garbage)
    with pytest.raises(DatasetError, match="file not found"):
        read_xyzcut(tmp_path / "missing.jpg.mat")


def test_transformation_round_trip_and_hloc_rows(tmp_path):
    rng = np.random.default_rng(3)
    after, before = random_pose(rng), random_pose(rng)
    path = write_transformation(tmp_path / "DUC_trans_024.txt", after, before)
    got_before, got_after = read_transformations(path)
    np.testing.assert_array_equal(got_after, after)
    np.testing.assert_array_equal(got_before, before)
    np.testing.assert_array_equal(read_transformation(path), after)
    # hloc's localize_inloc: np.fromstring(raw_lines[7..10], sep=" ")
    raw = path.read_text().splitlines(keepends=True)
    hloc_matrix = np.array([np.fromstring(raw[i], sep=" ") for i in range(7, 11)])
    np.testing.assert_array_equal(hloc_matrix, after)


def test_transformation_reads_eigen_style_file(tmp_path):
    path = tmp_path / "DUC_trans_025.txt"
    path.write_text("Before general icp:\n   1 0 0 1\n0 1 0 2\n0 0 1 3\n0 0 0 1\n\n"
                    "After general icp:\n   0.999815  -0.0192384 0.000326935     8.57697\n"
                    "  0.0192385    0.999815 -0.00031564     2.88553\n"
                    "-0.00032084 0.000321874           1    0.124155\n"
                    "          0           0           0           1\n\n")
    after = read_transformation(path)
    np.testing.assert_allclose(after[:3, 3], [8.57697, 2.88553, 0.124155])


@pytest.mark.parametrize("edit, line, message", [
    (lambda lines: lines[:9], None, "at least 11 lines"),
    (lambda lines: lines[:6] + ["After ICP:"] + lines[7:], 7, "'After general icp:'"),
    (lambda lines: lines[:8] + ["1 2 3"] + lines[9:], 9, "4 numbers"),
    (lambda lines: lines[:10] + ["0 0 1 1"] + lines[11:], 11, "last matrix row"),
])
def test_transformation_errors_name_file_and_line(tmp_path, edit, line, message):
    path = write_transformation(tmp_path / "t.txt", np.eye(4))
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    where = re.escape(str(path) if line is None else f"{path}:{line}")
    with pytest.raises(DatasetError, match=where + ".*" + message):
        read_transformation(path)


def test_cutout_names():
    cutout = parse_cutout_name("database/cutouts/DUC1/024/DUC_cutout_024_150_-30.jpg")
    assert (cutout.floor, cutout.scan_id, cutout.building, cutout.yaw, cutout.pitch) == ("DUC1", "024", "DUC", 150, -30)
    assert cutout.xyz_name == "database/cutouts/DUC1/024/DUC_cutout_024_150_-30.jpg.mat"
    assert cutout.transformation_name == "database/alignments/DUC1/transformations/DUC_trans_024.txt"
    assert cutout_name("DUC2", "110", "DUC", 0, 0) == "database/cutouts/DUC2/110/DUC_cutout_110_0_0.jpg"
    for bad in ("database/cutouts/DUC1/024/DUC_cutout_025_0_0.jpg", "cutouts/DUC1/024/DUC_cutout_024_0_0.jpg",
                "database/cutouts/DUC1/024/DUC_cutout_024_0_0.png"):
        with pytest.raises(DatasetError, match="is not 'database/cutouts"):
            parse_cutout_name(bad)


def test_query_focal_rule():
    assert INLOC_QUERY_FOCAL == pytest.approx(3136.0)
    assert inloc_query_focal(4032, 3024) == pytest.approx(3136.0)  # hloc's value at full size
    assert inloc_query_focal(3024, 4032) == pytest.approx(3136.0)
    assert inloc_query_focal(1600, 1200) == pytest.approx(3136.0 * 1600 / 4032)
    camera = inloc_query_camera(640, 480)
    assert camera.model.name == "SIMPLE_PINHOLE"
    np.testing.assert_allclose(camera.params, [640 * 28 / 36, 320, 240])


def test_query_floors(tmp_path):
    path = write_query_floors(tmp_path / "query_floors.txt", {"IMG_0001.JPG": "DUC1", "IMG_0002.JPG": "DUC2"})
    assert read_query_floors(path) == {"IMG_0001.JPG": "DUC1", "IMG_0002.JPG": "DUC2"}
    path.write_text("IMG_0001.JPG DUC1\nIMG_0002.JPG\n")
    with pytest.raises(DatasetError, match=re.escape(f"{path}:2")):
        read_query_floors(path)
