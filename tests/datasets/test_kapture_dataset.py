"""The strict kapture reader (d2_sfm.datasets.kapture_dataset) on small kapture folders written by
the tests: what it reads, what it refuses (one line naming file and line), that it never runs code
from or writes into a dataset, and that it reads what kapture itself and `d2_sfm.export kapture`
write."""
from __future__ import annotations

import json

import cv2
import h5py
import numpy as np
import pycolmap
import pytest

from d2_sfm.cli import EXIT_BAD_INPUT, run_cli
from d2_sfm.datasets import DatasetError
from d2_sfm.datasets.aachen import DatabaseImage, reconstruction_from_images
from d2_sfm.datasets.formats import rigid_from_qt
from d2_sfm.datasets import kapture_dataset
from d2_sfm.datasets.kapture_dataset import KaptureDataset, query_condition, read_kapture_folder
from d2_sfm.datasets.kapture_writer import write_kapture_folder
from d2_sfm.localization.scenes import KaptureScene
from d2_sfm.errors import D2SfmError

SIZE = (64, 48)


def camera(f: float = 50.0) -> pycolmap.Camera:
    return pycolmap.Camera(model="SIMPLE_RADIAL", width=SIZE[0], height=SIZE[1], params=[f, 32.0, 24.0, 0.01])


def pose(i: int) -> pycolmap.Rigid3d:
    return rigid_from_qt([1.0, 0.1 * i, 0.0, 0.0], [i, 0.5, 2.0 + i])


def write_images(folder, names):
    rng = np.random.default_rng(0)
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 255, (SIZE[1], SIZE[0], 3), dtype=np.uint8))
    return [folder / n for n in names]


@pytest.fixture
def dataset_root(tmp_path):
    """mapping/: 3 posed images (2 cameras); query/: a day and a night query, ground truth for one."""
    sources = write_images(tmp_path / "src", ["db/a.jpg", "db/b.jpg", "db/c.jpg",
                                              "query/day/q1.jpg", "query/night/q2.jpg"])
    root = tmp_path / "kapture"
    write_kapture_folder(root / "mapping", [(f"db/{n}.jpg", sources[i], camera(50 + (i == 2)), pose(i))
                                            for i, n in enumerate("abc")])
    write_kapture_folder(root / "query", [("query/day/q1.jpg", sources[3], camera(60), pose(7)),
                                          ("query/night/q2.jpg", sources[4], camera(60), None)])
    return root


def snapshot(root):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_reads_a_localization_dataset(dataset_root):
    before = snapshot(dataset_root)
    dataset = KaptureDataset.from_root(dataset_root)
    assert dataset.db_names == [f"mapping/sensors/records_data/db/{n}.jpg" for n in "abc"]
    assert [q.name for q in dataset.queries] == ["query/sensors/records_data/query/day/q1.jpg",
                                                 "query/sensors/records_data/query/night/q2.jpg"]
    assert [q.condition for q in dataset.queries] == ["day", "night"]
    assert all((dataset.image_dir / name).is_file() for name in dataset.db_names)
    image = dataset.database[2]
    assert image.camera.params.tolist() == camera(51).params.tolist()
    assert np.allclose(image.cam_from_world.matrix(), pose(2).matrix())
    reference = dataset.reference_reconstruction()
    assert reference.num_reg_images() == 3 and reference.num_cameras() == 2
    assert set(dataset.ground_truth()) == {"q1.jpg"}
    assert np.allclose(dataset.ground_truth()["q1.jpg"].matrix(), pose(7).matrix())
    assert snapshot(dataset_root) == before  # nothing written into the dataset


def test_scene_gives_localize_the_ground_truth_and_day_night_groups(dataset_root):
    from d2_sfm import localize

    scene = localize.open_scene("kapture", dataset_root)
    assert isinstance(scene, KaptureScene)
    assert scene.ground_truth_file == dataset_root / "query" / "sensors" / "trajectories.txt"
    assert set(scene.ground_truth) == {"q1.jpg"}
    assert scene.evaluation_groups({}) == {"q1.jpg": "day", "q2.jpg": "night"}
    assert scene.observations() is None  # database pairs from the poses
    assert scene.dataset_files()[0] == dataset_root / "mapping" / "sensors" / "sensors.txt"


def test_query_condition_comes_from_a_folder_name():
    assert query_condition("query/night/nexus5x/x.jpg") == "night"
    assert query_condition("Day/x.jpg") == "day"
    assert query_condition("night.jpg") is None and query_condition("seq1/x.jpg") is None


def test_mapping_images_without_pose_are_skipped_with_a_warning(dataset_root, caplog):
    trajectories = dataset_root / "mapping" / "sensors" / "trajectories.txt"
    lines = trajectories.read_text().splitlines()
    trajectories.write_text("\n".join(lines[:-1]) + "\n")  # c.jpg loses its pose
    dataset = KaptureDataset.from_root(dataset_root)
    assert len(dataset.database) == 2
    assert "1 of 3 mapping images have no pose" in caplog.text


def replace_line(path, old, new):
    text = path.read_text()
    assert old in text, (old, text)
    path.write_text(text.replace(old, new, 1))


CASES = {
    # case: (file under the root, change, text expected in the one-line message)
    "unknown camera model": ("mapping/sensors/sensors.txt", ("SIMPLE_RADIAL", "FISHEYE_62"), "FISHEYE_62"),
    "wrong parameter count": ("mapping/sensors/sensors.txt", (", 0.01", ""), "takes width, height and 4"),
    "non-integer width": ("query/sensors/sensors.txt", (", 64, 48,", ", 64.5, 48,"), "image width"),
    "short trajectory line": ("mapping/sensors/trajectories.txt", ("0, cam000, ", "0, "), "9 fields"),
    "non-numeric pose": ("mapping/sensors/trajectories.txt", ("0, cam000, 1.0,", "0, cam000, nan,"), "finite"),
    "empty pose field": ("mapping/sensors/trajectories.txt", ("0, cam000, 1.0,", "0, cam000, ,"), "incomplete pose"),
    "bad timestamp": ("mapping/sensors/records_camera.txt", ("0, cam000", "t0, cam000"), "timestamp"),
    "absolute image path": ("mapping/sensors/records_camera.txt", ("db/a.jpg", "/etc/passwd"), "relative path"),
    "escaping image path": ("mapping/sensors/records_camera.txt", ("db/a.jpg", "../../x.jpg"), "relative path"),
    "image path with a space": ("mapping/sensors/records_camera.txt", ("db/a.jpg", "db/a b.jpg"), "whitespace"),
    "unknown sensor": ("query/sensors/records_camera.txt", ("0, cam000", "0, cam999"), "cam999"),
    "duplicate record": ("mapping/sensors/records_camera.txt", ("1, cam000, db/b.jpg", "0, cam000, db/b.jpg"),
                         "two records"),
    "same image twice": ("mapping/sensors/records_camera.txt", ("db/b.jpg", "db/a.jpg"), "already recorded"),
    "missing image": ("query/sensors/records_camera.txt", ("q1.jpg", "q9.jpg"), "missing"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_files_are_one_line_naming_the_file(dataset_root, case):
    relative, (old, new), expected = CASES[case]
    replace_line(dataset_root / relative, old, new)
    with pytest.raises(DatasetError) as error:
        KaptureDataset.from_root(dataset_root)
    message = str(error.value)
    assert "\n" not in message and expected in message
    if case != "missing image":
        assert f"{relative}:" in message  # file and line


def test_a_query_needs_intrinsics(dataset_root):
    """UNKNOWN_CAMERA (kapture's size-only camera) is refused at the first query record using it."""
    replace_line(dataset_root / "query" / "sensors" / "sensors.txt", "SIMPLE_RADIAL, 64, 48, 60.0, 32.0, 24.0, 0.01",
                 "UNKNOWN_CAMERA, 64, 48")
    with pytest.raises(DatasetError, match=r"query/sensors/records_camera.txt:3: .*UNKNOWN_CAMERA"):
        KaptureDataset.from_root(dataset_root)


def test_not_utf8_and_missing_files_and_rigs_are_named(dataset_root):
    records = dataset_root / "query" / "sensors" / "records_camera.txt"
    records.write_bytes(records.read_bytes().replace(b"q1.jpg", b"q\xe91.jpg"))
    with pytest.raises(D2SfmError, match="records_camera.txt:3: .*not valid UTF-8"):
        KaptureDataset.from_root(dataset_root)
    (dataset_root / "mapping" / "sensors" / "rigs.txt").write_text("rig, cam000, 1, 0, 0, 0, 0, 0, 0\n")
    with pytest.raises(DatasetError, match="rigs.txt: camera rigs are not supported"):
        KaptureDataset.from_root(dataset_root)
    (dataset_root / "mapping" / "sensors" / "rigs.txt").unlink()
    (dataset_root / "mapping" / "sensors" / "trajectories.txt").unlink()
    with pytest.raises(DatasetError, match="trajectories.txt: file not found"):
        KaptureDataset.from_root(dataset_root)


def test_feature_files_are_never_evaluated(dataset_root, tmp_path):
    """kapture's own reader eval()s the dtype of feature config files; ours never opens them."""
    marker = tmp_path / "PWNED"
    config = dataset_root / "mapping" / "reconstruction" / "keypoints" / "d2net" / "keypoints.txt"
    config.parent.mkdir(parents=True)
    config.write_text(f"# kapture format: 1.1\nd2net, __import__('pathlib').Path('{marker}').touch(), 3\n")
    KaptureDataset.from_root(dataset_root)
    assert not marker.exists()


def test_localize_without_the_dataset_says_where_it_comes_from(tmp_path, caplog):
    from d2_sfm import localize

    missing = tmp_path / "nowhere"
    assert run_cli(localize.cli, ["--dataset", "kapture", "--root", str(missing)]) == EXIT_BAD_INPUT
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and str(missing) in errors[0]
    assert "python -m d2_sfm.datasets.kapture_dataset" in errors[0] and "mapping/" in errors[0]
    missing.mkdir()  # a folder without mapping/: the reader's line plus the same hint
    with pytest.raises(DatasetError, match="mapping: folder not found.*kapture_dataset"):
        localize.open_scene("kapture", missing)


def test_kapture_reads_what_we_write(dataset_root):
    """Our writer (used for the synthetic dataset) against kapture's own reader (our data: safe)."""
    kcsv = pytest.importorskip("kapture.io.csv")
    for folder, num_poses in (("mapping", 3), ("query", 1)):
        data = kcsv.kapture_from_dir(str(dataset_root / folder))
        ours = read_kapture_folder(dataset_root / folder)
        assert len(list(data.records_camera.key_pairs())) == len(ours.records)
        assert len(list(data.trajectories.key_pairs())) == len(ours.poses) == num_poses
        for sensor_id, cam in ours.cameras.items():
            assert data.sensors[sensor_id].camera_params == [cam.width, cam.height, *cam.params.tolist()]
        for (timestamp, sensor_id), rigid in ours.poses.items():
            theirs = data.trajectories[timestamp, sensor_id]
            assert np.allclose(theirs.inverse().t.ravel(), rigid.inverse().translation)  # same centre


def test_reads_what_d2_sfm_export_kapture_writes(tmp_path):
    """A run folder (features + a posed model with one image left out) exported by
    `python -m d2_sfm.export kapture`, read back: same cameras, poses and records."""
    pytest.importorskip("kapture")
    from d2_sfm import export

    run = tmp_path / "run"
    names = ["a.jpg", "b.jpg", "c.jpg"]
    write_images(tmp_path / "images", names)
    rng = np.random.default_rng(1)
    run.mkdir()
    with h5py.File(run / "features.h5", "w") as f:
        for name in names:
            group = f.create_group(name)
            group["keypoints"] = rng.uniform(0, 40, (5, 2)).astype(np.float32)
            group["descriptors"] = rng.normal(size=(8, 5)).astype(np.float32)
            group["scores"] = np.ones(5, np.float32)
            group["image_size"] = np.array(SIZE)
    model = reconstruction_from_images(tuple(DatabaseImage(n, camera(50 + i), pose(i), i + 1, i + 1)
                                             for i, n in enumerate(names[:2])))
    (run / "sfm").mkdir()
    model.write(str(run / "sfm"))
    (run / "summary.json").write_text(json.dumps({"images": str(tmp_path / "images")}))
    out = tmp_path / "exported"
    assert run_cli(export.cli, ["kapture", "--input", str(run), "--output", str(out),
                                "--image-files", "copy"]) == 0
    folder = read_kapture_folder(out)
    assert sorted(r.path for r in folder.records) == names
    by_name = {r.path: r for r in folder.records}
    for i, name in enumerate(names[:2]):
        record = by_name[name]
        assert folder.cameras[record.sensor_id].params.tolist() == camera(50 + i).params.tolist()
        assert np.allclose(folder.pose(record).matrix(), pose(i).matrix())
        assert folder.image_path(record).is_file()
    assert folder.cameras[by_name["c.jpg"].sensor_id] is None  # UNKNOWN_CAMERA: no intrinsics
    assert folder.pose(by_name["c.jpg"]) is None



def test_converter_cli_refuses_bad_folders_in_one_line(dataset_root, tmp_path):
    """`python -m d2_sfm.datasets.kapture_dataset --from SRC --output DST`: exit 2, DST untouched."""
    assert run_cli(kapture_dataset.cli, ["--from", str(tmp_path / "none"), "--output", str(tmp_path / "k")]) \
        == EXIT_BAD_INPUT
    assert not (tmp_path / "k").exists()
    assert run_cli(kapture_dataset.cli, ["--from", str(tmp_path / "src"), "--output", str(dataset_root)]) \
        == EXIT_BAD_INPUT  # not a synthetic Aachen dataset, and the output is not empty either
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left
