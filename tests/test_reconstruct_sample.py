"""End to end on the embedded sample scene: extract -> pairs -> match -> database -> verify -> map.

Slow (about 2 minutes on 2 CPU cores) but part of CI: it is the README's main job.
"""
from __future__ import annotations

import json
import shutil

import pycolmap
import pytest

from d2_sfm import reconstruct
from d2_sfm.datasets.sample_scene import write_sample_scene
from d2_sfm.extractor import ExtractionConfig
from d2_sfm.reconstruct import ReconstructionConfig

pytestmark = pytest.mark.slow

OUTPUTS = ("features.h5", "pairs.txt", "matches.h5", "database.db", "sfm/cameras.bin", "sfm/images.bin",
           "sfm/points3D.bin", "points.ply", "summary.json", "overview.png")


def test_sample_scene_end_to_end_resume_and_bad_image(tmp_path):
    scene = write_sample_scene(tmp_path / "scene")
    image_dir = tmp_path / "images"
    shutil.copytree(scene / "images", image_dir)
    _, ground_truth = reconstruct.sample_scene(scene)
    config = ReconstructionConfig(weights="hed_vgg16", extraction=ExtractionConfig(max_edge=640))
    out = tmp_path / "out"

    summary = reconstruct.main(image_dir, out, config, ground_truth=ground_truth)
    data = summary.data
    assert data["status"] == "ok", data["warnings"]
    assert data["num_registered"] == data["num_images"] == len(ground_truth)
    assert all((out / name).is_file() for name in OUTPUTS)
    gt = data["ground_truth"]
    assert gt["num_aligned"] == len(ground_truth)
    assert gt["rotation_error_deg"]["max"] <= 1.0
    assert gt["max_centre_error_fraction_of_scene"] <= 0.02
    stored = json.loads((out / "summary.json").read_text())
    for key in ("num_images", "num_registered", "num_points3D", "mean_track_length", "mean_reprojection_error",
                "registered", "timings", "weights", "settings"):
        assert key in stored
    assert stored["weights"]["name"] == "hed_vgg16" and len(stored["weights"]["sha256"]) == 64
    assert set(stored["timings"]) >= {"extract", "pairs", "match", "database", "verify", "map", "total"}
    model = pycolmap.Reconstruction(str(out / "sfm"))  # COLMAP binary, readable
    assert model.num_reg_images() == len(ground_truth)

    # a second run with the same settings skips every step: no output is rewritten
    written = {name: (out / name).stat().st_mtime_ns for name in OUTPUTS if name != "summary.json"}
    again = reconstruct.main(image_dir, out, config, ground_truth=ground_truth)
    assert {name: (out / name).stat().st_mtime_ns for name in written} == written
    assert again.data["num_points3D"] == data["num_points3D"]

    # an unreadable image among good ones: skipped with a reason, the rest still reconstructs
    (image_dir / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    with_broken = reconstruct.main(image_dir, out, config, ground_truth=ground_truth).data
    assert "broken.jpg" in with_broken["failed_images"]
    assert with_broken["num_images"] == len(ground_truth) + 1
    assert with_broken["num_registered"] == len(ground_truth)
    assert with_broken["unregistered"] == ["broken.jpg"]
