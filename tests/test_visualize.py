"""visualize: canvas sizes, refused output names, and a top view of a tiny pycolmap model."""
import cv2
import numpy as np
import pytest

from d2_sfm.colmap import pycolmap
from d2_sfm.errors import D2SfmError
from d2_sfm.visualize import VisualizationError, draw_matches, draw_overview, save_overview, write_picture


def tiny_reconstruction() -> pycolmap.Reconstruction:
    """Three cameras 1 m apart looking down +z at a few coloured points, built in memory."""
    reconstruction = pycolmap.Reconstruction()
    camera = pycolmap.Camera(model="PINHOLE", width=64, height=48, params=[50, 50, 32, 24], camera_id=1)
    reconstruction.add_camera_with_trivial_rig(camera)
    for index in range(3):
        image = pycolmap.Image(name=f"im{index}.jpg", camera_id=1, image_id=index + 1,
                               keypoints=np.zeros((0, 2), np.float64))
        cam_from_world = pycolmap.Rigid3d(pycolmap.Rotation3d(np.eye(3)), np.array([-float(index), 0.0, 0.0]))
        reconstruction.add_image_with_trivial_frame(image, cam_from_world)
    for x in (-1.0, 0.0, 1.0, 2.0, 3.0):
        reconstruction.add_point3D(np.array([x, 0.0, 5.0]), pycolmap.Track(), np.array([255, 0, 0], np.uint8))
    return reconstruction


def test_draw_matches_canvas_is_both_images_side_by_side():
    image0, image1 = np.zeros((100, 60, 3), np.uint8), np.zeros((80, 40, 3), np.uint8)
    keypoints = np.array([[5.0, 5.0], [20.0, 30.0]])
    canvas = draw_matches(image0, image1, keypoints, keypoints, np.array([[0, 1], [1, 0]]))
    assert canvas.shape == (100, 100, 3) and canvas.dtype == np.uint8
    tall = np.zeros((960, 200, 3), np.uint8)  # shrunk to max_height, width in proportion
    assert draw_matches(tall, image1, keypoints, keypoints, np.zeros((0, 2), int), max_height=480).shape \
        == (480, 140, 3)


def test_write_picture_refuses_unknown_extensions_and_writes_png(tmp_path):
    picture = np.full((10, 12, 3), 200, np.uint8)
    with pytest.raises(D2SfmError, match="picture.gif"):
        write_picture(tmp_path / "picture.gif", picture)
    assert not (tmp_path / "picture.gif").exists()
    written = write_picture(tmp_path / "sub" / "picture.PNG", picture)
    assert cv2.imread(str(written)).shape == (10, 12, 3)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["picture.PNG"]  # no partial left


def test_draw_overview_of_a_tiny_reconstruction(tmp_path):
    reconstruction = tiny_reconstruction()
    canvas = draw_overview(reconstruction, size=200)
    assert canvas.shape == (200, 200, 3)
    red = (canvas[:, :, 2] == 255) & (canvas[:, :, 1] == 0) & (canvas[:, :, 0] == 0)
    assert red.any()  # the points, in their own colour (BGR)
    assert (canvas != 255).any(axis=2).sum() > red.sum()  # cameras and the caption too
    output = save_overview(reconstruction, tmp_path / "overview.png", size=128)
    assert cv2.imread(str(output)).shape == (128, 128, 3)


def test_an_empty_model_is_one_error():
    with pytest.raises(VisualizationError, match="no registered image"):
        draw_overview(pycolmap.Reconstruction())
