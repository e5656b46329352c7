"""COLMAP database step on a synthetic scene: cameras, +0.5 keypoints, verification, weak pairs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap
import pytest

from d2_sfm import colmap_db
from d2_sfm.colmap_db import CameraConfig, DatabaseError, VerificationConfig
from d2_sfm.errors import D2SfmError
from d2_sfm.h5io import H5FormatError, atomic_h5
from synthetic_colmap_scene import FOCAL, HEIGHT, WIDTH, SyntheticInputs, synthetic_inputs


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> SyntheticInputs:
    return synthetic_inputs(tmp_path_factory.mktemp("scene"))


def build(scene: SyntheticInputs, tmp_path: Path, camera: CameraConfig = CameraConfig(),
          verification: VerificationConfig = VerificationConfig()) -> colmap_db.DatabaseSummary:
    return colmap_db.main(tmp_path / "database.db", scene.image_dir, scene.pairs, scene.features, scene.matches,
                          camera, verification, num_threads=1)


def test_database_content_keypoints_shifted_and_weak_pair_removed(scene, tmp_path):
    summary = build(scene, tmp_path, verification=VerificationConfig(border_margin=0))
    with pycolmap.Database.open(str(tmp_path / "database.db")) as db:
        assert db.num_images() == len(scene.names)
        assert db.num_cameras() == 1  # auto: same size, no EXIF
        assert db.num_rigs() == 1 and db.num_frames() == len(scene.names)
        for name in scene.names:
            image = db.read_image_with_name(name)
            np.testing.assert_allclose(db.read_keypoints(image.image_id)[:, :2], scene.keypoints[name] + 0.5)
        view0, noise = db.read_image_with_name("view0.jpg").image_id, db.read_image_with_name("noise.jpg").image_id
        assert len(db.read_matches(view0, noise)) == 150  # raw matches are kept ...
        assert not db.exists_two_view_geometry(view0, noise)  # ... but the pair is not verified
        view1 = db.read_image_with_name("view1.jpg").image_id
        assert len(db.read_two_view_geometry(view0, view1).inlier_matches) > 200
    by_pair = {(s.name0, s.name1): s for s in summary.pairs}
    assert not by_pair[("view0.jpg", "noise.jpg")].kept
    assert all(s.kept for (a, b), s in by_pair.items() if "noise.jpg" not in (a, b))
    assert all(s.inlier_ratio > 0.9 for s in summary.kept_pairs)
    stored = colmap_db.read_pair_stats(colmap_db.pair_stats_path(tmp_path / "database.db"))
    assert [s.as_dict() for s in stored] == [s.as_dict() for s in summary.pairs]
    assert set(summary.camera_sources.values()) == {"default"}
    assert not (tmp_path / "database.db.partial").exists()


def test_matches_at_the_image_border_are_left_out(scene, tmp_path):
    build(scene, tmp_path, verification=VerificationConfig(border_margin=8))
    keypoints = scene.keypoints["noise.jpg"]
    near_border = ((keypoints < 7.5) | (keypoints > np.array([WIDTH, HEIGHT]) - 8.5)).any(axis=1)
    with pycolmap.Database.open(str(tmp_path / "database.db")) as db:
        view0, noise = db.read_image_with_name("view0.jpg").image_id, db.read_image_with_name("noise.jpg").image_id
        kept = db.read_matches(view0, noise)
    assert 0 < len(kept) < 150
    assert not near_border[kept[:, 1]].any()
    assert colmap_db.border_keypoints(scene.features, ["noise.jpg"], 8)["noise.jpg"].sum() >= near_border.sum()


def test_weak_pair_thresholds_are_configurable(scene, tmp_path):
    strict = build(scene, tmp_path, verification=VerificationConfig(min_pair_inliers=10 ** 6))
    assert not strict.kept_pairs
    assert all("inliers <" in s.reason for s in strict.pairs if s.num_inliers)
    ratio = build(scene, tmp_path, verification=VerificationConfig(min_pair_inliers=1, min_pair_inlier_ratio=1.01))
    assert not ratio.kept_pairs and any("inlier ratio" in s.reason for s in ratio.pairs)


@pytest.mark.parametrize("mode,expected", [("single", 1), ("per_image", 6), ("auto", 1)])
def test_camera_modes(scene, tmp_path, mode, expected):
    build(scene, tmp_path, CameraConfig(mode=mode), VerificationConfig(min_pair_inliers=10 ** 6))
    with pycolmap.Database.open(str(tmp_path / "database.db")) as db:
        assert db.num_cameras() == expected
        camera = db.read_all_cameras()[0]
        assert camera.model.name == "SIMPLE_RADIAL" and not camera.has_prior_focal_length
        assert camera.params[0] == pytest.approx(1.2 * WIDTH)  # pycolmap's default prior


def test_per_folder_cameras(tmp_path):
    scene = synthetic_inputs(tmp_path / "s", num_views=4, noise_view=False, folders=True)
    build(scene, tmp_path, CameraConfig(mode="per_folder"), VerificationConfig(min_pair_inliers=10 ** 6))
    with pycolmap.Database.open(str(tmp_path / "database.db")) as db:
        assert db.num_cameras() == 2
        by_folder = {}
        for image in db.read_all_images():
            by_folder.setdefault(image.name.split("/")[0], set()).add(image.camera_id)
        assert all(len(ids) == 1 for ids in by_folder.values()) and len(by_folder) == 2


def test_known_intrinsics_and_per_image_file(scene, tmp_path):
    summary = build(scene, tmp_path, CameraConfig(params=(FOCAL, FOCAL, WIDTH / 2, HEIGHT / 2)))
    with pycolmap.Database.open(str(tmp_path / "database.db")) as db:
        (camera,) = db.read_all_cameras()
        assert camera.model.name == "PINHOLE" and camera.has_prior_focal_length
        np.testing.assert_allclose(camera.params, [FOCAL, FOCAL, WIDTH / 2, HEIGHT / 2])
        view0, view1 = (db.read_image_with_name(n).image_id for n in ("view0.jpg", "view1.jpg"))
        geometry = db.read_two_view_geometry(view0, view1)
        assert pycolmap.TwoViewGeometryConfiguration(geometry.config).name == "CALIBRATED"
    assert summary.known_camera_ids == [camera.camera_id]

    intrinsics = tmp_path / "intrinsics.txt"
    intrinsics.write_text(f"view1.jpg SIMPLE_PINHOLE {WIDTH} {HEIGHT} 480 320 240\n")
    summary = build(scene, tmp_path, CameraConfig(intrinsics_file=intrinsics))
    assert summary.camera_sources["view1.jpg"] == "known" and summary.camera_sources["view0.jpg"] == "default"
    with pycolmap.Database.open(str(tmp_path / "database.db")) as db:
        camera = db.read_camera(db.read_image_with_name("view1.jpg").camera_id)
        assert camera.model.name == "SIMPLE_PINHOLE" and list(camera.params) == [480, 320, 240]
        assert db.num_cameras() == 2


def test_focal_from_exif(tmp_path):
    from PIL import Image

    scene = synthetic_inputs(tmp_path / "s", num_views=2, noise_view=False)
    for name in scene.names:
        exif = Image.Exif()
        exif[0x8769] = {0xA405: 35}  # FocalLengthIn35mmFilm in the Exif IFD
        Image.new("RGB", (WIDTH, HEIGHT), (128, 128, 128)).save(scene.image_dir / name, exif=exif)
    summary = build(scene, tmp_path)
    if set(summary.camera_sources.values()) != {"exif"}:
        pytest.skip("this pycolmap build does not read FocalLengthIn35mmFilm")
    with pycolmap.Database.open(str(tmp_path / "database.db")) as db:
        (camera,) = db.read_all_cameras()
        assert camera.has_prior_focal_length
        # COLMAP converts the 35 mm equivalent through the diagonals (43.27 mm and 800 px)
        assert camera.params[0] == pytest.approx(35 / np.hypot(36, 24) * np.hypot(WIDTH, HEIGHT), rel=0.01)


def test_bad_camera_inputs_name_the_problem(scene, tmp_path):
    with pytest.raises(DatabaseError, match="PINHOLE takes 4"):
        build(scene, tmp_path, CameraConfig(params=(1.0, 2.0), params_model="PINHOLE"))
    with pytest.raises(DatabaseError, match="name the camera model"):
        build(scene, tmp_path, CameraConfig(params=(1.0, 2.0, 3.0, 4.0, 5.0)))
    with pytest.raises(DatabaseError, match="unknown camera model"):
        CameraConfig(model="PINHOLEX")
    with pytest.raises(DatabaseError):
        CameraConfig(mode="per_camera")
    with pytest.raises(DatabaseError, match="expected numbers"):
        colmap_db.parse_camera_params("500,abc")
    bad = tmp_path / "bad_intrinsics.txt"
    bad.write_text("view1.jpg PINHOLE 640\n")
    with pytest.raises(DatabaseError, match="bad_intrinsics.txt:1"):
        build(scene, tmp_path, CameraConfig(intrinsics_file=bad))


def test_failure_leaves_no_database_behind(scene, tmp_path):
    database = tmp_path / "database.db"
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("view0.jpg view1.jpg\n")
    colmap_db.main(database, scene.image_dir, pairs, scene.features, scene.matches, num_threads=1)
    before = database.read_bytes()
    missing_pair_matches = tmp_path / "empty_matches.h5"
    with atomic_h5(missing_pair_matches):
        pass
    with pytest.raises(H5FormatError, match="no matches for the pair"):
        colmap_db.main(database, scene.image_dir, pairs, scene.features, missing_pair_matches, num_threads=1)
    assert database.read_bytes() == before  # the previous database is untouched
    assert not (tmp_path / "database.db.partial").exists()
    with pytest.raises(DatabaseError, match="does not exist"):
        colmap_db.main(tmp_path / "other.db", scene.image_dir, pairs, tmp_path / "nope.h5", scene.matches)


def test_cli_defaults_match_configs():
    args = colmap_db.build_parser().parse_args(["--images", "i", "--features", "f", "--pairs", "p",
                                                "--matches", "m", "--output", "o"])
    assert colmap_db.camera_config_from_args(args) == CameraConfig()
    assert colmap_db.verification_config_from_args(args) == VerificationConfig()


def test_two_pass_verification_redoes_near_misses_with_all_trials(scene, tmp_path):
    noise = ("view0.jpg", "noise.jpg")
    inliers = lambda summary: {(s.name0, s.name1): s.num_inliers for s in summary.pairs}  # noqa: E731
    one_pass = inliers(build(scene, tmp_path, verification=VerificationConfig(first_pass_trials=None)))
    assert one_pass[noise] >= 15  # chance inliers that 10000 trials find
    # one trial finds none of them; with a fraction of 1 no rejected pair counts as a near miss
    quick = build(scene, tmp_path, verification=VerificationConfig(first_pass_trials=1, second_pass_fraction=1.0))
    assert inliers(quick)[noise] < one_pass[noise] and not any(s.verified_twice for s in quick.pairs)
    # with a fraction of 0 every pair the first pass rejects is verified again with the full count
    again = build(scene, tmp_path, verification=VerificationConfig(first_pass_trials=1, second_pass_fraction=0.0))
    assert inliers(again) == one_pass
    assert noise in {(s.name0, s.name1) for s in again.pairs if s.verified_twice}
    stored = colmap_db.read_pair_stats(colmap_db.pair_stats_path(tmp_path / "database.db"))
    assert [s.verified_twice for s in stored] == [s.verified_twice for s in again.pairs]


@pytest.mark.parametrize("inliers,matches,expected", [(40, 200, True), (29, 200, False), (40, 500, False),
                                                      (60, 200, False), (60, 500, True)])
def test_near_misses_of_the_first_pass(inliers, matches, expected):
    config = VerificationConfig(min_pair_inliers=50, min_pair_inlier_ratio=0.15, second_pass_fraction=0.6)
    assert colmap_db.near_miss(inliers, matches, config) is expected


def test_first_pass_option():
    args = colmap_db.build_parser().parse_args(["--images", "i", "--features", "f", "--pairs", "p", "--matches", "m",
                                                "--output", "o", "--first-pass-trials", "0"])
    assert colmap_db.verification_config_from_args(args).first_pass_trials is None
    with pytest.raises(D2SfmError, match="first_pass_trials"):
        VerificationConfig(first_pass_trials=VerificationConfig.max_num_trials + 1)
