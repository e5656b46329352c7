"""The default SfM sample scene: files, ground truth, idempotence."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from d2_sfm.datasets import DatasetError
from d2_sfm.datasets.render import PinholeCamera, project, render
from d2_sfm.datasets.sample_scene import (GROUND_TRUTH_FILE, IMAGE_DIR, header_line, is_complete, read_ground_truth,
                                          sample_scene_poses, write_sample_scene)
from d2_sfm.datasets.scenes import plaza_site

pytest.importorskip("skimage")
SIZE = (160, 120)


@pytest.fixture(scope="module")
def scene_root(tmp_path_factory):
    return write_sample_scene(tmp_path_factory.mktemp("sample") / "sample_scene", num_views=3, size=SIZE, seed=4)


def test_files_and_ground_truth_reproduce_the_images(scene_root):
    views = read_ground_truth(scene_root / GROUND_TRUTH_FILE)
    assert list(views) == ["view_000.jpg", "view_001.jpg", "view_002.jpg"]
    rng = np.random.default_rng(4)
    site = plaza_site(rng)  # the poses are drawn after the site, from the same generator
    for pose, view in zip(sample_scene_poses(3, rng), views.values()):
        np.testing.assert_allclose(view.cam_from_world.matrix(), pose, atol=1e-12)
        assert (view.camera.width, view.camera.height) == SIZE and view.camera.model.name == "PINHOLE"
    view = views["view_001.jpg"]
    camera = PinholeCamera(*SIZE, *view.camera.params)
    rendering = render(site.scene, camera, view.cam_from_world.matrix())
    on_disk = cv2.imread(str(scene_root / IMAGE_DIR / "view_001.jpg"))[..., ::-1]
    assert on_disk.shape == (SIZE[1], SIZE[0], 3)
    assert np.abs(on_disk.astype(float) - rendering.image).mean() < 6  # JPEG only
    # a scene point seen at a pixel centre projects back there with the ground-truth pose
    row, col = 60, 80
    uv, _ = project(rendering.xyz[row, col][None].astype(float), camera, view.cam_from_world.matrix())
    np.testing.assert_allclose(uv[0], [col + 0.5, row + 0.5], atol=1e-3)


def test_idempotent_and_rewritten_when_incomplete_or_changed(scene_root, tmp_path):
    scene_root = Path(shutil.copytree(scene_root, tmp_path / "sample_scene"))  # rewritten below: a copy
    gt = scene_root / GROUND_TRUTH_FILE
    stamp = gt.stat().st_mtime_ns
    write_sample_scene(scene_root, num_views=3, size=SIZE, seed=4)
    assert gt.stat().st_mtime_ns == stamp
    header = header_line(3, SIZE, 4)
    assert is_complete(scene_root, header, 3) and not is_complete(scene_root, header_line(3, SIZE, 5), 3)
    image = scene_root / IMAGE_DIR / "view_002.jpg"
    image.rename(image.with_suffix(".bak"))
    assert not is_complete(scene_root, header, 3)
    image.with_suffix(".bak").rename(image)
    write_sample_scene(scene_root, num_views=2, size=SIZE, seed=4)
    assert len(read_ground_truth(gt)) == 2
    assert sorted(p.name for p in (scene_root / IMAGE_DIR).iterdir()) == ["view_000.jpg", "view_001.jpg"]


def test_ground_truth_intrinsics_are_optional_and_malformed_lines_named(tmp_path):
    path = tmp_path / GROUND_TRUTH_FILE
    path.write_text("# header\na.jpg 1 0 0 0 0 0 0 100 100 80 60\nc.jpg 1 0 0 0 1 2 3\n")
    views = read_ground_truth(path)
    assert views["c.jpg"].camera is None and views["a.jpg"].camera.width == 160
    path.write_text("# header\na.jpg 1 0 0 0 0 0 0 100 100 80 60\nb.jpg 1 0 0 0 0 0 0 100 100 80\n")
    with pytest.raises(DatasetError, match=re.escape(f"{path}:3") + ".*expected 12 fields"):
        read_ground_truth(path)
