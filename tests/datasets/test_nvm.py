"""NVM v3: write -> read round trip, VisualSFM conventions, hloc-parsable layout, errors."""
from __future__ import annotations

import re

import cv2  # noqa: F401  (before pycolmap)
import numpy as np
import pytest

from d2_sfm.datasets import DatasetError
from d2_sfm.datasets.formats import (NvmCamera, NvmModel, NvmPoints, colmap_to_nvm_xy, nvm_to_colmap_xy,
                                     read_nvm, rigid_from_qt, write_nvm)


def small_model() -> NvmModel:
    rng = np.random.default_rng(1)
    cameras = []
    for i in range(3):
        q = rng.normal(size=4)
        pose = rigid_from_qt(q / np.linalg.norm(q), rng.normal(size=3))
        cameras.append(NvmCamera.from_pose(f"db/{1000 + i}.jpg", 1469.2 + i, pose, radial=-0.03 * i))
    points = NvmPoints(xyz=rng.normal(size=(4, 3)), rgb=rng.integers(0, 256, (4, 3)).astype(np.uint8),
                       point_index=np.array([0, 0, 1, 1, 1, 3, 3]), image_index=np.array([0, 1, 0, 1, 2, 2, 0]),
                       feature_index=np.array([0, 0, 1, 1, 0, 1, 2]), xy=rng.normal(size=(7, 2)) * 100)
    return NvmModel(tuple(cameras), points)


def test_round_trip(tmp_path):
    model = small_model()
    back = read_nvm(write_nvm(tmp_path / "m.nvm", model))
    assert back.cameras == model.cameras
    p, q = model.points, back.points
    np.testing.assert_array_equal(q.xyz, p.xyz)
    np.testing.assert_array_equal(q.rgb, p.rgb)
    assert len(q) == 4 and len(q.point_index) == 7  # point 2 has no measurement
    order = np.argsort(p.point_index, kind="stable")
    for name in ("point_index", "image_index", "feature_index", "xy"):
        np.testing.assert_array_equal(getattr(q, name), getattr(p, name)[order])
    assert len(read_nvm(tmp_path / "m.nvm", skip_points=True).points) == 0


def test_camera_stores_centre_and_world_to_camera_rotation():
    pose = rigid_from_qt([np.cos(0.3), 0, np.sin(0.3), 0], [1.0, -2.0, 3.0])
    camera = NvmCamera.from_pose("a.jpg", 100.0, pose)
    center = -pose.rotation.matrix().T @ pose.translation
    np.testing.assert_allclose(camera.center, center)
    np.testing.assert_allclose(camera.qvec_wxyz, [np.cos(0.3), 0, np.sin(0.3), 0])
    np.testing.assert_allclose(camera.cam_from_world.matrix(), pose.matrix(), atol=1e-12)


def test_measurements_are_relative_to_the_image_centre():
    xy = np.array([[0.5, 0.5], [640.0, 480.0]])
    np.testing.assert_allclose(colmap_to_nvm_xy(xy, 640, 480), [[-319.5, -239.5], [320, 240]])
    np.testing.assert_allclose(nvm_to_colmap_xy(colmap_to_nvm_xy(xy, 640, 480), 640, 480), xy)


def test_layout_matches_what_hloc_colmap_from_nvm_splits(tmp_path):
    model = small_model()
    lines = write_nvm(tmp_path / "m.nvm", model).read_text().split("\n")
    assert lines[0] == "NVM_V3" and lines[1] == "" and lines[2] == "3"
    for line in lines[3:6]:  # split(" ") into exactly name f qw qx qy qz cx cy cz r 0
        fields = line.split(" ")
        assert len(fields) == 11 and fields[-1] == "0"
    assert lines[6] == "" and lines[7] == "4"
    for line in lines[8:12]:
        fields = line.split(" ")
        assert len(fields) == 7 + 4 * int(fields[6])


def test_reads_header_options_and_blank_lines(tmp_path):
    path = tmp_path / "a.nvm"
    path.write_text("NVM_V3 FixedK 1 2 3 4 0\n\n\n1\na.jpg 10 1 0 0 0 1 2 3 0 0\n\n\n1\n1 2 3 4 5 6 1 0 7 0.5 -0.5\n")
    model = read_nvm(path)
    assert model.cameras[0].center == (1.0, 2.0, 3.0)
    np.testing.assert_allclose(model.points.xy, [[0.5, -0.5]])
    assert model.points.feature_index.tolist() == [7]


@pytest.mark.parametrize("text, line, message", [
    ("NVM_V2\n1\n", 1, "expected the NVM header"),
    ("NVM_V3\n\n2 3\n", 3, "number of cameras"),
    ("NVM_V3\n1\na.jpg 10 1 0 0 0 1 2 3 0\n", 3, "expected 11 fields"),
    ("NVM_V3\n1\na.jpg 10 0 0 0 0 1 2 3 0 0\n", 3, "zero length"),
    ("NVM_V3\n1\na.jpg 10 1 0 0 0 1 2 3 0 0\n1\n1 2 3 4 5 6 2 0 0 1 1\n", 5, "got 11 fields"),
    ("NVM_V3\n1\na.jpg 10 1 0 0 0 1 2 3 0 0\n1\n1 2 3 4 5 6 1 1 0 1 1\n", 5, "image indices"),
    ("NVM_V3\n1\na.jpg 10 1 0 0 0 1 2 3 0 0\n1\n1 2 3 4 5 300 0\n", 5, "colour"),
])
def test_malformed_lines_name_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "bad.nvm"
    path.write_text(text)
    with pytest.raises(DatasetError, match=re.escape(f"{path}:{line}") + ".*" + message):
        read_nvm(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.nvm"
    path.write_text("NVM_V3\n2\na.jpg 10 1 0 0 0 1 2 3 0 0\n")
    with pytest.raises(DatasetError, match="ends after 1 of 2 cameras"):
        read_nvm(path)
    path.write_text("NVM_V3\n1\na.jpg 10 1 0 0 0 1 2 3 0 0\n2\n1 2 3 4 5 6 0\n")
    with pytest.raises(DatasetError, match="ends after 1 of 2 points"):
        read_nvm(path)
