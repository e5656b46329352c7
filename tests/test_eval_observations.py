"""pipelines/eval_observations.py: a model made from a sample-scene rendering's true cameras (in a
frame of its own, keypoints with 0.3 px noise) fits them within its noise, with no radial trend; a
1 % radial bias planted in its keypoints raises the printed slope; missing ground truth is one clear error."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from d2_sfm.colmap import pycolmap
from d2_sfm.datasets.sample_scene import GROUND_TRUTH_FILE, read_ground_truth, write_sample_scene
from d2_sfm.errors import D2SfmError

PATH = Path(__file__).resolve().parents[1] / "pipelines" / "eval_observations.py"


@pytest.fixture(scope="module")
def evaluation():
    spec = importlib.util.spec_from_file_location("eval_observations_under_test", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def model_of(ground_truth: Path, radial_scale: float, seed: int = 0) -> pycolmap.Reconstruction:
    """Points around the scene's centre seen by every true camera; keypoints = projections + noise,
    scaled by `radial_scale` about the principal point; the whole model moved by a similarity."""
    rng = np.random.default_rng(seed)
    views = read_ground_truth(ground_truth)
    points = rng.uniform([-1.5, 0.5, 0.0], [1.5, 2.5, 1.6], (200, 3))
    model = pycolmap.Reconstruction()
    tracks = [pycolmap.Track() for _ in points]
    for image_id, (name, view) in enumerate(sorted(views.items()), start=1):
        camera = pycolmap.Camera(model="PINHOLE", width=view.camera.width, height=view.camera.height,
                                 params=view.camera.params, camera_id=image_id)
        model.add_camera_with_trivial_rig(camera)
        pixels = camera.img_from_cam((points @ view.cam_from_world.rotation.matrix().T)
                                     + view.cam_from_world.translation)
        centre = np.array([camera.principal_point_x, camera.principal_point_y])
        pixels = centre + radial_scale * (pixels - centre) + rng.normal(0, 0.3, pixels.shape)
        model.add_image_with_trivial_frame(pycolmap.Image(name=name, camera_id=image_id, image_id=image_id,
                                                          points2D=[pycolmap.Point2D(xy) for xy in pixels]),
                                           view.cam_from_world)
        for index, track in enumerate(tracks):
            track.add_element(image_id, index)
    for point, track in zip(points, tracks):
        model.add_point3D(point, track)
    model.transform(pycolmap.Sim3d(2.5, pycolmap.Rotation3d(np.array([0.3, -0.2, 0.9])), np.array([4.0, -1.0, 2.0])))
    return model


def slope(lines: list[str]) -> float:
    return float(re.search(r"slope ([-+0-9.]+) per mille", lines[0]).group(1))


def test_a_planted_radial_bias_shows_as_the_slope(evaluation, tmp_path):
    ground_truth = write_sample_scene(tmp_path / "scene", num_views=4, size=(320, 240), seed=3) / GROUND_TRUTH_FILE
    found = {}
    for scale in (1.0, 1.01):
        folder = tmp_path / f"model{scale}"
        folder.mkdir()
        model_of(ground_truth, scale).write(str(folder))
        found[scale] = evaluation.main(folder, ground_truth)
    mean = float(re.search(r"mean residual ([0-9.]+) px", found[1.0][0]).group(1))
    assert 0.1 < mean < 0.4 and abs(slope(found[1.0])) < 0.5, found[1.0][0]  # 0.3 px noise, no bias
    assert slope(found[1.01]) - slope(found[1.0]) > 1.0, found[1.01][0]  # mostly absorbed by the points


def test_ground_truth_without_every_registered_view_is_one_error(evaluation, tmp_path):
    ground_truth = write_sample_scene(tmp_path / "scene", num_views=4, size=(320, 240), seed=3) / GROUND_TRUTH_FILE
    partial = tmp_path / "partial.txt"
    partial.write_text("".join(ground_truth.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(D2SfmError, match="needs a pose and intrinsics for each of at least 3 registered images"):
        evaluation.with_true_cameras(model_of(ground_truth, 1.0), partial)
