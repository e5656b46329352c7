"""Synthetic Aachen v1.0 / v1.1 and InLoc: exact layouts, readers, and ground-truth consistency."""
from __future__ import annotations

import inspect
from pathlib import Path

import cv2
import numpy as np
import pycolmap
import pytest

from d2_sfm.colmap_readonly import read_image_ids

from d2_sfm.datasets import DatasetError
from d2_sfm.datasets.aachen import AachenDataset
from d2_sfm.datasets.formats import nvm_to_colmap_xy, read_intrinsics_list, read_nvm, read_pairs, read_poses
from d2_sfm.datasets.inloc import InLocDataset, inloc_query_camera, read_query_floors
from d2_sfm.datasets.render import PinholeCamera, project, render
from d2_sfm.datasets.scenes import room_site, street_site
from d2_sfm.datasets.synthetic import build_parser, main

pytest.importorskip("skimage")
SIZE = (320, 240)
SEED = 3


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def camera_of(camera: pycolmap.Camera) -> PinholeCamera:
    """PinholeCamera of a SIMPLE_RADIAL (k = 0), SIMPLE_PINHOLE or PINHOLE camera."""
    p = camera.params
    if camera.model.name == "PINHOLE":
        return PinholeCamera(camera.width, camera.height, *p)
    return PinholeCamera(camera.width, camera.height, p[0], p[0], p[1], p[2])


@pytest.fixture(scope="module")
def aachen_root(tmp_path_factory) -> Path:
    return main("aachen", tmp_path_factory.mktemp("aachen") / "aachen", seed=SEED, num_db=5, num_queries=3,
                image_size=SIZE)


@pytest.fixture(scope="module")
def aachen_v1_1_root(tmp_path_factory) -> Path:
    return main("aachen_v1_1", tmp_path_factory.mktemp("aachen11") / "aachen_v1.1", seed=SEED, num_db=4,
                num_queries=2, image_size=SIZE)


@pytest.fixture(scope="module")
def inloc_root(tmp_path_factory) -> Path:
    return main("inloc", tmp_path_factory.mktemp("inloc") / "inloc", seed=SEED, num_db=6, num_queries=2,
                image_size=SIZE)


def test_aachen_v1_0_layout_is_exactly_the_real_one(aachen_root):
    expected = {f"images_upright/db/{1000 + i}.jpg" for i in range(5)} | {
        "images_upright/query/day/milestone/day_000.jpg", "images_upright/query/day/milestone/day_001.jpg",
        "images_upright/query/night/nexus5x/night_002.jpg",
        "queries/day_time_queries_with_intrinsics.txt", "queries/night_time_queries_with_intrinsics.txt",
        "3D-models/aachen_cvpr2018_db.nvm", "3D-models/database_intrinsics.txt", "aachen.db",
        "ground_truth/queries.txt", "ground_truth/query_intrinsics.txt", "ground_truth/database.txt",
        "ground_truth/database_intrinsics.txt", "pairs/pairs-query-gt-covis5.txt"}
    assert files_under(aachen_root) == expected


def test_aachen_v1_0_readers_and_reference_model(aachen_root):
    dataset = AachenDataset.from_root(aachen_root, "v1_0")
    assert dataset.db_names == [f"db/{1000 + i}.jpg" for i in range(5)]
    assert dataset.query_names("night") == ["query/night/nexus5x/night_002.jpg"]
    assert len(dataset.query_names("day")) == 2 and dataset.query("night_002.jpg").condition == "night"
    reference = dataset.reference_reconstruction()
    assert reference.num_images() == 5 and reference.num_points3D() == 0
    gt = read_poses(aachen_root / "ground_truth/database.txt")
    gt_cameras = read_intrinsics_list(aachen_root / "ground_truth/database_intrinsics.txt")
    for name, pose in gt.items():
        image = reference.find_image_with_name(name)
        assert image.num_points2D() == 0
        np.testing.assert_allclose(image.cam_from_world().matrix(), pose.matrix(), atol=1e-9)
        np.testing.assert_allclose(reference.cameras[image.camera_id].params, gt_cameras[name].params)
    # what hloc's colmap_from_nvm reads; read-only, so the dataset gets no -wal/-shm files
    assert sorted(read_image_ids(aachen_root / "aachen.db")) == dataset.db_names
    assert dataset.covisibility_pairs(2)


def test_aachen_nvm_measurements_are_projections_and_hloc_parsable(aachen_root):
    model = read_nvm(aachen_root / "3D-models/aachen_cvpr2018_db.nvm")
    cameras = read_intrinsics_list(aachen_root / "3D-models/database_intrinsics.txt")
    points = model.points
    assert len(points) > 50 and np.bincount(points.point_index).min() >= 2
    for i, nvm_camera in enumerate(model.cameras):
        camera = cameras[nvm_camera.name]
        assert nvm_camera.focal == pytest.approx(camera.params[0])
        seen = points.image_index == i
        uv, _ = project(points.xyz[points.point_index[seen]], camera_of(camera), nvm_camera.cam_from_world.matrix())
        np.testing.assert_allclose(nvm_to_colmap_xy(points.xy[seen], camera.width, camera.height), uv, atol=1e-6)
    text = (aachen_root / "3D-models/database_intrinsics.txt").read_text()
    assert "#" not in text and all(len(line.split(" ")) == 8 for line in text.splitlines())


def test_aachen_query_ground_truth_reproduces_the_query_image(aachen_root):
    site = street_site(np.random.default_rng(SEED))  # the first draws of the generator
    pose = read_poses(aachen_root / "ground_truth/queries.txt")["day_000.jpg"]
    camera = read_intrinsics_list(aachen_root / "queries/day_time_queries_with_intrinsics.txt")[
        "query/day/milestone/day_000.jpg"]
    rendering = render(site.scene, camera_of(camera), pose.matrix())
    on_disk = cv2.imread(str(aachen_root / "images_upright/query/day/milestone/day_000.jpg"))[..., ::-1]
    assert np.abs(on_disk.astype(float) - rendering.image).mean() < 8  # JPEG only
    pairs = read_pairs(aachen_root / "pairs/pairs-query-gt-covis5.txt", aachen_root / "images_upright")
    assert {q for q, _ in pairs} == set(AachenDataset.from_root(aachen_root).query_names())


def test_aachen_v1_1_layout_and_model(aachen_v1_1_root):
    files = files_under(aachen_v1_1_root)
    assert {f for f in files if f.startswith("3D-models/")} == {
        f"3D-models/aachen_v_1_1/{n}.bin" for n in ("cameras", "images", "points3D")}
    assert "aachen.db" not in files and "queries/night_time_queries_with_intrinsics.txt" in files
    dataset = AachenDataset.from_root(aachen_v1_1_root, "v1_1")
    gt = read_poses(aachen_v1_1_root / "ground_truth/database.txt")
    reference = dataset.reference_reconstruction()
    for name, pose in gt.items():
        np.testing.assert_allclose(reference.find_image_with_name(name).cam_from_world().matrix(), pose.matrix(),
                                   atol=1e-9)
    model = pycolmap.Reconstruction(str(aachen_v1_1_root / "3D-models/aachen_v_1_1"))
    assert model.num_points3D() > 20 and model.compute_mean_reprojection_error() < 1e-6
    assert dataset.covisibility_pairs(2)


def test_inloc_layout_is_exactly_the_real_one(inloc_root):
    files = files_under(inloc_root)
    cutouts = {f"database/cutouts/{floor}/{scan}/DUC_cutout_{scan}_{yaw}_0.jpg"
               for floor, scan in (("DUC1", "024"), ("DUC2", "110")) for yaw in range(0, 360, 60)}
    expected = cutouts | {c + ".mat" for c in cutouts} | {
        "database/alignments/DUC1/transformations/DUC_trans_024.txt",
        "database/alignments/DUC2/transformations/DUC_trans_110.txt",
        "query/iphone7/IMG_0001.JPG", "query/iphone7/IMG_0002.JPG",
        "ground_truth/queries.txt", "ground_truth/query_intrinsics.txt", "ground_truth/database.txt",
        "ground_truth/database_intrinsics.txt", "ground_truth/query_floors.txt", "pairs/pairs-query-gt-covis10.txt"}
    assert files == expected
    floors = read_query_floors(inloc_root / "ground_truth/query_floors.txt")
    assert floors == {"IMG_0001.JPG": "DUC1", "IMG_0002.JPG": "DUC2"}
    for query, cutout in read_pairs(inloc_root / "pairs/pairs-query-gt-covis10.txt", inloc_root):
        assert cutout.split("/")[2] == floors[query.rsplit("/", 1)[-1]]


def test_inloc_xyzcut_and_alignment_match_the_cutout_pose(inloc_root):
    dataset = InLocDataset.from_root(inloc_root)
    assert dataset.floors == ("DUC1", "DUC2") and len(dataset.cutouts) == 12
    gt = read_poses(inloc_root / "ground_truth/database.txt")
    cameras = read_intrinsics_list(inloc_root / "ground_truth/database_intrinsics.txt")
    name = "database/cutouts/DUC2/110/DUC_cutout_110_120_0.jpg"
    world = dataset.cutout_xyz(name, world=True)   # XYZcut (scan frame) -> world by P_after_GICP
    rows, cols = np.nonzero(np.isfinite(world).all(-1))
    assert len(rows) > 0.5 * world.shape[0] * world.shape[1]
    uv, _ = project(world[rows, cols], camera_of(cameras[name]), gt[name].matrix())
    np.testing.assert_allclose(uv, np.stack([cols + 0.5, rows + 0.5], 1), atol=1e-3)


def test_inloc_query_ground_truth_and_camera_rule(inloc_root):
    dataset = InLocDataset.from_root(inloc_root)
    camera = dataset.query_camera("query/iphone7/IMG_0001.JPG")
    expected = inloc_query_camera(*SIZE)
    assert camera.model.name == "SIMPLE_PINHOLE" and camera.params.tolist() == expected.params.tolist()
    gt_camera = read_intrinsics_list(inloc_root / "ground_truth/query_intrinsics.txt")["query/iphone7/IMG_0001.JPG"]
    assert gt_camera.params.tolist() == expected.params.tolist()
    site = room_site(np.random.default_rng(SEED), z0=0.0)  # DUC1 is built first from the generator
    pose = read_poses(inloc_root / "ground_truth/queries.txt")["IMG_0001.JPG"]
    rendering = render(site.scene, camera_of(camera), pose.matrix())
    on_disk = cv2.imread(str(inloc_root / "query/iphone7/IMG_0001.JPG"))[..., ::-1]
    assert np.abs(on_disk.astype(float) - rendering.image).mean() < 8


def test_missing_files_are_named(aachen_root, tmp_path):
    with pytest.raises(DatasetError, match="aachen_v_1_1.*expected a COLMAP model"):
        AachenDataset.from_root(aachen_root, "v1_1")
    with pytest.raises(DatasetError, match="images_upright.*folder not found"):
        AachenDataset.from_root(tmp_path)
    with pytest.raises(DatasetError, match="query/iphone7.*folder not found"):
        InLocDataset.from_root(tmp_path)


def test_refuses_to_overwrite_and_cli_defaults_match_main(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(DatasetError, match="not empty"):
        main("inloc", tmp_path)
    args = build_parser().parse_args(["--layout", "inloc", "--output", "x"])
    defaults = inspect.signature(main).parameters
    for name in ("seed", "num_db", "num_queries", "overwrite", "image_size"):
        assert tuple(np.atleast_1d(getattr(args, name))) == tuple(np.atleast_1d(defaults[name].default)), name
