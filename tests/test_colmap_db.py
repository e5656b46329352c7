"""COLMAP database step on a synthetic scene: cameras, +0.5 keypoints, verification, weak pairs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pycolmap
import pytest

from d2_sfm import colmap_db
from d2_sfm.colmap_db import CameraConfig, DatabaseError, VerificationConfig
from d2_sfm.h5io import H5FormatError, atomic_h5, write_features, write_matches

WIDTH, HEIGHT, FOCAL = 640, 480, 500.0


def look_at(centre: np.ndarray, target: np.ndarray) -> pycolmap.Rigid3d:
    z = (target - centre) / np.linalg.norm(target - centre)
    x = np.cross([0.0, -1.0, 0.0], z)
    x /= np.linalg.norm(x)
    rotation = np.stack([x, np.cross(z, x), z])
    return pycolmap.Rigid3d(pycolmap.Rotation3d(rotation), -rotation @ centre)


@dataclass
class SyntheticInputs:
    image_dir: Path
    features: Path
    matches: Path
    pairs: Path
    names: list[str]
    cam_from_world: dict[str, pycolmap.Rigid3d]
    keypoints: dict[str, np.ndarray]  # d2_sfm convention (top-left pixel centre at 0)


def synthetic_inputs(root: Path, num_views: int = 5, noise_view: bool = True, seed: int = 0,
                     folders: bool = False) -> SyntheticInputs:
    """Views of random 3D points on an arc (projections as keypoints, matches from point ids), plus
    an optional `noise.jpg` whose matches to the first view are random (a false pair)."""
    rng = np.random.default_rng(seed)
    points = rng.uniform([-2, -1.5, -1], [2, 1.5, 1], size=(1500, 3))
    camera = pycolmap.Camera(model="PINHOLE", width=WIDTH, height=HEIGHT,
                             params=[FOCAL, FOCAL, WIDTH / 2, HEIGHT / 2])
    image_dir = root / "images"
    names, poses, keypoints, index_of = [], {}, {}, {}
    for i in range(num_views):
        name = f"{'ab'[i % 2]}/view{i}.jpg" if folders else f"view{i}.jpg"
        angle = np.deg2rad(-30 + 60 * i / max(num_views - 1, 1))
        pose = look_at(np.array([6 * np.sin(angle), 0.2 * np.cos(3 * angle), -6 * np.cos(angle)]), np.zeros(3))
        camera_points = points @ pose.rotation.matrix().T + pose.translation
        uv = camera.img_from_cam(camera_points)
        visible = np.flatnonzero((camera_points[:, 2] > 0) & (uv[:, 0] > 1) & (uv[:, 0] < WIDTH - 1)
                                 & (uv[:, 1] > 1) & (uv[:, 1] < HEIGHT - 1))
        keypoints[name] = (uv[visible] - 0.5 + rng.normal(0, 0.3, (len(visible), 2))).astype(np.float32)
        index_of[name] = {int(p): k for k, p in enumerate(visible)}
        names.append(name)
        poses[name] = pose
    if noise_view:
        names.append("noise.jpg")
        keypoints["noise.jpg"] = rng.uniform([0, 0], [WIDTH - 1, HEIGHT - 1], (600, 2)).astype(np.float32)
    for name in names:
        (image_dir / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image_dir / name), np.full((HEIGHT, WIDTH, 3), 128, np.uint8))
    features, matches, pairs = root / "features.h5", root / "matches.h5", root / "pairs.txt"
    with atomic_h5(features) as handle:
        for name in names:
            count = len(keypoints[name])
            write_features(handle, name, keypoints[name], rng.normal(size=(count, 8)), np.ones(count), (WIDTH, HEIGHT))
    pair_list = [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]
    with atomic_h5(matches) as handle:
        for name0, name1 in pair_list:
            matches0 = np.full(len(keypoints[name0]), -1)
            if "noise.jpg" in (name0, name1):
                if name0 == names[0]:
                    chosen = rng.choice(len(matches0), 150, replace=False)
                    matches0[chosen] = rng.choice(len(keypoints[name1]), 150, replace=False)
            else:
                for point, k in index_of[name0].items():
                    matches0[k] = index_of[name1].get(point, -1)
            write_matches(handle, name0, name1, matches0, (matches0 >= 0).astype(float))
    pairs.write_text("".join(f"{a} {b}\n" for a, b in pair_list))
    return SyntheticInputs(image_dir, features, matches, pairs, names, poses, keypoints)


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
