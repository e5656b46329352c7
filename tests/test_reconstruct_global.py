"""--mapper global: pycolmap's global mapping (GLOMAP) on the session's sample-scene run (6 views at
320 px, a weak view graph: 8 strong pairs), resumed so that only the steps whose settings changed
are redone; the database the database step wrote is never modified (view-graph calibration works
on a copy). Pose accuracy on a well-conditioned scene: test_reconstruct.py (synthetic views)."""
from __future__ import annotations

import json
import shutil

import pytest

from d2_sfm import reconstruct
from d2_sfm.colmap_db import CameraConfig
from d2_sfm.datasets.sample_scene import GROUND_TRUTH_FILE, read_ground_truth
from d2_sfm.errors import ConfigError
from d2_sfm.extractor import ExtractionConfig
from d2_sfm.reconstruct import MapperConfig, ReconstructionConfig
from d2_sfm.refine import RefineConfig

DATABASE_OUTPUTS = ("features.h5", "pairs.txt", "matches.h5", "database.db", "database.pairs.json")


def config(**changes) -> ReconstructionConfig:
    """The settings of the session's run (unrefined keypoints) with `changes`."""
    return ReconstructionConfig(**{"weights": "hed_vgg16", "extraction": ExtractionConfig(max_edge=320),
                                   "refine": RefineConfig(mode="none"), **changes})


def test_global_mapper_redoes_only_map_and_leaves_the_database_as_it_was(run_dir):
    incremental = json.loads((run_dir / "summary.json").read_text())
    steps_before = json.loads((run_dir / "steps.json").read_text())
    inputs = {name: (run_dir / name).read_bytes() for name in DATABASE_OUTPUTS}
    images = run_dir.parent / "scene" / "images"
    summary = reconstruct.main(images, run_dir, config(mapper=MapperConfig(method="global")))
    assert summary.data["num_registered"] >= 2 and incremental["num_registered"] >= 2
    assert summary.data["settings"]["mapper"]["method"] == "global"
    assert summary.reconstruction.num_reg_images() == summary.data["num_registered"]
    assert all((run_dir / name).exists() for name in ("sfm/images.bin", "points.ply", "overview.png"))
    assert {name: (run_dir / name).read_bytes() for name in DATABASE_OUTPUTS} == inputs
    assert not (run_dir / "models_work").exists()
    steps = json.loads((run_dir / "steps.json").read_text())
    assert all(steps[step] == steps_before[step] for step in ("extract", "pairs", "match", "database"))
    assert steps["map"]["fingerprint"] != steps_before["map"]["fingerprint"]


def test_global_mapper_registers_the_sample_scene_with_known_intrinsics(run_dir, tmp_path):
    # its own copy: other camera settings rewrite the database the other test expects unchanged
    shutil.copytree(run_dir.parent, tmp_path / "run", symlinks=True)
    run_dir = tmp_path / "run" / "out"
    scene = run_dir.parent / "scene"
    views = read_ground_truth(scene / GROUND_TRUTH_FILE)
    camera = next(iter(views.values())).camera
    known = CameraConfig(params=tuple(float(v) for v in camera.params))
    # the default refinement: on this weak graph unrefined keypoints register 4 of the 6 views
    settings = config(camera=known, mapper=MapperConfig(method="global"), refine=RefineConfig())
    summary = reconstruct.main(scene / "images", run_dir, settings,
                               ground_truth={name: view.cam_from_world for name, view in views.items()})
    data = summary.data
    assert data["num_registered"] == len(views)
    assert data["ground_truth"]["num_aligned"] == len(views)
    assert data["ground_truth"]["rotation_error_deg"]["max"] <= 2.0  # measured 0.38 (320 px views)
    assert all(list(map(float, c["params"])) == list(camera.params) for c in data["cameras"])  # kept fixed


def test_mapper_choice_is_validated():
    with pytest.raises(ConfigError, match="method"):
        MapperConfig(method="glomap")


def test_known_intrinsics_stay_fixed_in_global_bundle_adjustment():
    fixed = reconstruct.global_mapper_options(MapperConfig(method="global"), intrinsics_known=True)
    adjustment = fixed.mapper.bundle_adjustment
    assert not (adjustment.refine_focal_length or adjustment.refine_extra_params or adjustment.refine_principal_point)
    free = reconstruct.global_mapper_options(MapperConfig(method="global", refine_known_intrinsics=True), True)
    assert free.mapper.bundle_adjustment.refine_focal_length
    unknown = reconstruct.global_mapper_options(MapperConfig(method="global"), intrinsics_known=False)
    assert unknown.mapper.bundle_adjustment.refine_focal_length
