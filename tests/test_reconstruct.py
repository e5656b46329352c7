"""Reconstruction pipeline: CLI defaults, bad input, mapping and model assessment (fast cases)."""
from __future__ import annotations

import logging

import cv2
import numpy as np
import pycolmap
import pytest
from synthetic_colmap_scene import synthetic_inputs

from d2_sfm import colmap_db, reconstruct
from d2_sfm.alignment import align_and_compare, model_poses, relative_rotation_errors
from d2_sfm.cli import run_cli
from d2_sfm.colmap_db import VerificationConfig
from d2_sfm.errors import ConfigError
from d2_sfm.reconstruct import ReconstructionConfig, ReliabilityConfig


def test_cli_defaults_equal_the_api_defaults():
    args = reconstruct.build_parser().parse_args(["--output", "out"])
    assert reconstruct.config_from_args(args) == ReconstructionConfig()
    args = reconstruct.build_parser().parse_args(["--output", "out", "--bundle-intrinsics"])
    assert reconstruct.config_from_args(args).refine.bundle.refine_intrinsics
    args = reconstruct.build_parser().parse_args(["--output", "out", "--bundle-intrinsics", "--refine", "keypoints"])
    with pytest.raises(ConfigError, match="--bundle-intrinsics needs --refine keypoints\\+bundle"):
        reconstruct.config_from_args(args)


def run(argv: list[str], caplog) -> tuple[int, str]:
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        code = run_cli(reconstruct.cli, argv)
    return code, " ".join(r.getMessage() for r in caplog.records)


def test_empty_folder_single_image_and_file_output(tmp_path, caplog):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, message = run(["--images", str(empty), "--output", str(tmp_path / "out")], caplog)
    assert code == 2 and "contains no images" in message
    code, message = run(["--images", str(tmp_path / "missing"), "--output", str(tmp_path / "out")], caplog)
    assert code == 2 and "does not exist" in message

    single = tmp_path / "single"
    single.mkdir()
    cv2.imwrite(str(single / "only.jpg"), np.zeros((32, 32, 3), np.uint8))
    code, message = run(["--images", str(single), "--output", str(tmp_path / "out")], caplog)
    assert code == 2 and "single image" in message and "only.jpg" in message

    output_file = tmp_path / "file"
    output_file.write_text("x")
    code, message = run(["--images", str(single), "--output", str(output_file)], caplog)
    assert code == 2 and "not a folder" in message


def test_unrelated_images_give_a_clear_error(tmp_path, caplog):
    """Two photographs that share nothing: no verified pair, exit 2, nothing half-written."""
    skimage_data = pytest.importorskip("skimage.data")
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), cv2.resize(skimage_data.astronaut()[..., ::-1], (200, 200)))
    cv2.imwrite(str(images / "b.png"), cv2.resize(skimage_data.coffee()[..., ::-1], (200, 133)))
    unreadable = images / "c.jpg"
    unreadable.write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    code, message = run(["--images", str(images), "--output", str(out), "--weights", "hed_vgg16",
                         "--max-edge", "200"], caplog)
    assert code == 2
    assert "no image pair survived geometric verification" in message or "found no initial pair" in message
    assert (out / "database.db").is_file() and not (out / "database.db.partial").exists()
    with pycolmap.Database.open(str(out / "database.db")) as db:
        assert db.num_images() == 2  # the unreadable image was skipped, the database is complete
    assert not (out / "summary.json").exists()


@pytest.fixture(scope="module")
def mapped(tmp_path_factory):
    """The synthetic scene of test_colmap_db through database + pycolmap mapping (no D2 involved)."""
    root = tmp_path_factory.mktemp("mapped")
    scene = synthetic_inputs(root, num_views=5)
    summary = colmap_db.main(root / "database.db", scene.image_dir, scene.pairs, scene.features, scene.matches,
                             verification=VerificationConfig(), num_threads=1)
    options = reconstruct.mapper_options(reconstruct.MapperConfig(num_threads=1), [])
    models = reconstruct.incremental_mapping(root / "database.db", scene.image_dir, root / "models", 6, options)
    return scene, summary, reconstruct.best_model(models), root


def test_mapping_recovers_the_synthetic_poses(mapped):
    scene, _, model, _ = mapped
    assert model.num_reg_images() == 5  # the noise view has no verified pair
    errors = align_and_compare(model_poses(model), scene.cam_from_world)
    assert errors.max_rotation_deg < 0.5
    assert errors.max_centre_fraction < 0.01
    assert relative_rotation_errors(model_poses(model), scene.cam_from_world).max() < 0.5


def test_global_mapping_recovers_the_synthetic_poses_without_touching_the_database(mapped, tmp_path):
    """GLOMAP on the same database (unknown intrinsics: view-graph calibration, in a copy)."""
    scene, _, _, root = mapped
    database = (root / "database.db").read_bytes()
    models = reconstruct.map_images(reconstruct.MapperConfig(method="global"), root / "database.db", scene.image_dir,
                                    tmp_path / "models", tmp_path / "work", 6, [])
    model = reconstruct.best_model(models)
    assert model.num_reg_images() == 5
    errors = align_and_compare(model_poses(model), scene.cam_from_world)
    assert errors.max_rotation_deg < 0.5 and errors.max_centre_fraction < 0.01
    assert (root / "database.db").read_bytes() == database and not (tmp_path / "work").exists()


def test_assessment_flags_weak_registrations(mapped):
    scene, summary, model, root = mapped
    cameras = reconstruct.initial_cameras(root / "database.db")
    ok = reconstruct.assess_model(model, summary.pairs, summary.camera_sources, cameras, 6, ReliabilityConfig())
    assert ok.status == "partial" and not ok.warnings  # 5 of 6 registered, nothing suspicious
    strict = ReliabilityConfig(strong_pair_inliers=10 ** 6)
    flagged = reconstruct.assess_model(model, summary.pairs, summary.camera_sources, cameras, 6, strict)
    assert flagged.status == "unreliable" and set(flagged.weak_images) == set(model_poses(model))
    # counts at registration (before a bundle adjustment dropped observations) replace the model's
    few = min(model.images.values(), key=lambda image: image.num_points3D)
    counted = {image.name: image.num_points3D for image in model.images.values() if image.has_pose}
    thin = reconstruct.assess_model(model, summary.pairs, summary.camera_sources, cameras, 6, ReliabilityConfig(),
                                    {**counted, few.name: 12})
    assert thin.status == "unreliable" and set(thin.weak_images) == {few.name} and "12 3D points" in thin.warnings[0]
    assert reconstruct.assess_model(model, summary.pairs, summary.camera_sources, cameras, 6, ReliabilityConfig(),
                                    counted).status == "partial"


def test_stability_check_stops_after_one_clearly_stable_rerun(mapped, tmp_path):
    """A well-determined model: the first re-run from another pair registers every view again and
    agrees to a fraction of a degree, so no second re-run is made."""
    scene, summary, model, root = mapped
    options = reconstruct.mapper_options(reconstruct.MapperConfig(num_threads=1), [])
    runs = reconstruct.stability_check(root / "database.db", scene.image_dir, tmp_path / "work", model, summary.pairs,
                                       options, ReliabilityConfig(stability_runs=2))
    assert len(runs) == 1 and runs[0]["num_registered"] == model.num_reg_images()
    assert runs[0]["max_deg"] < 0.5 and not reconstruct.stability_warnings(runs, ReliabilityConfig())
    assert options.init_num_trials == 1 and not (tmp_path / "work").exists()


def test_a_borderline_rerun_asks_for_another_and_a_large_one_flags():
    config = ReliabilityConfig()
    run = {"initial_pair": ["a", "b"], "num_registered": 6, "num_common_pairs": 15, "median_deg": 0.1, "max_deg": 0.3}
    assert reconstruct.clearly_stable(run, 6, config)
    assert not reconstruct.clearly_stable({**run, "num_registered": 5}, 6, config)
    borderline = {**run, "max_deg": 0.6 * config.max_stability_deg}
    assert not reconstruct.clearly_stable(borderline, 6, config) and not reconstruct.stability_warnings([borderline],
                                                                                                        config)
    assert reconstruct.stability_warnings([{**run, "median_deg": 2 * config.max_stability_median_deg}], config)


def test_camera_warnings_for_implausible_intrinsics():
    config = ReliabilityConfig()
    prior = pycolmap.Camera.create_from_model_name(1, "SIMPLE_RADIAL", 768.0, 640, 480)
    collapsed = pycolmap.Camera.create_from_model_name(1, "SIMPLE_RADIAL", 400.0, 640, 480)
    assert "moved x0.52" in reconstruct.camera_warnings(collapsed, prior, "default", ["a.png"], config)[0]
    fine = pycolmap.Camera.create_from_model_name(1, "SIMPLE_RADIAL", 700.0, 640, 480)
    assert reconstruct.camera_warnings(fine, prior, "default", ["a.png"], config) == []
    assert reconstruct.camera_warnings(collapsed, prior, "exif", ["a.png"], config)  # EXIF: tighter limit
    distorted = pycolmap.Camera.create_from_model_name(1, "SIMPLE_RADIAL", 700.0, 640, 480)
    distorted.params = [700.0, 320.0, 240.0, -1.0]
    assert "radial distortion" in reconstruct.camera_warnings(distorted, prior, "default", ["a"], config)[0]


def test_step_log_resumes_only_same_settings(tmp_path):
    log = reconstruct.StepLog(tmp_path / "steps.json")
    output = tmp_path / "x.txt"
    log.start("pairs", "key1")
    assert not log.is_complete("pairs", "key1", [output])
    output.write_text("done")
    log.finish("pairs", {"pairs": 1.0})
    again = reconstruct.StepLog(tmp_path / "steps.json")
    assert again.is_complete("pairs", "key1", [output])
    assert not again.is_complete("pairs", "key2", [output])
    output.unlink()
    assert not again.is_complete("pairs", "key1", [output])
    (tmp_path / "steps.json").write_text("{broken")
    assert reconstruct.StepLog(tmp_path / "steps.json").entries == {}
