"""Exports of a real (small) reconstruction to kapture, COLMAP text and official .d2-net files,
read back by kapture, pycolmap and plain numpy; and the import of .d2-net files into features.h5."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import cv2
import h5py
import numpy as np
import pycolmap
import pytest

from d2_sfm import export, reconstruct
from d2_sfm.cli import EXIT_BAD_INPUT, run_cli
from d2_sfm.extractor import ExtractionConfig
from d2_sfm.formats_d2net import D2NetFileError, IMPORTED_WEIGHTS, import_d2net_npz, read_d2net_file
from d2_sfm.h5io import list_h5_names, read_features, read_matches
from d2_sfm.refine import RefineConfig
from d2_sfm.datasets.formats import read_pairs


def h5_match_counts(run_dir) -> dict[tuple[str, str], int]:
    counts = {}
    for name0, name1 in read_pairs(run_dir / "pairs.txt"):
        pairs, _ = read_matches(run_dir / "matches.h5", name0, name1)
        counts[tuple(sorted((name0, name1)))] = len(pairs)
    return counts


def test_colmap_text_loads_back_identically(run_dir, tmp_path):
    out = tmp_path / "text"
    assert run_cli(export.cli, ["colmap-text", "--input", str(run_dir), "--output", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"cameras.txt", "images.txt", "points3D.txt"}
    binary, text = pycolmap.Reconstruction(str(run_dir / "sfm")), pycolmap.Reconstruction(str(out))
    assert text.num_reg_images() == binary.num_reg_images() and text.num_points3D() == binary.num_points3D()
    for camera_id, camera in binary.cameras.items():
        assert text.cameras[camera_id].model == camera.model
        np.testing.assert_array_equal(text.cameras[camera_id].params, camera.params)
    for image_id, image in binary.images.items():
        other = text.images[image_id]
        assert other.name == image.name
        np.testing.assert_allclose(other.cam_from_world().matrix(), image.cam_from_world().matrix(), rtol=0, atol=1e-12)
    for point_id, point in binary.points3D.items():
        other = text.points3D[point_id]
        np.testing.assert_allclose(other.xyz, point.xyz, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(other.color, point.color)
        assert [(e.image_id, e.point2D_idx) for e in other.track.elements] == \
            [(e.image_id, e.point2D_idx) for e in point.track.elements]


def test_d2net_npz_files_load_with_plain_numpy(run_dir, tmp_path):
    out = tmp_path / "npz"
    assert run_cli(export.cli, ["d2net-npz", "--input", str(run_dir), "--output", str(out)]) == 0
    names = list_h5_names(run_dir / "features.h5")
    assert sorted(p.name for p in out.iterdir()) == sorted(n + ".d2-net" for n in names)
    for name in names:
        with np.load(out / f"{name}.d2-net", allow_pickle=False) as data:
            assert sorted(data.files) == ["descriptors", "keypoints", "scores"]
            keypoints, scores, descriptors = data["keypoints"], data["scores"], data["descriptors"]
        ours = read_features(run_dir / "features.h5", name)
        n = len(ours["keypoints"])
        assert keypoints.shape == (n, 3) and scores.shape == (n,) and descriptors.shape == (n, 512)
        assert keypoints.dtype == scores.dtype == descriptors.dtype == np.float32
        np.testing.assert_array_equal(keypoints[:, :2], ours["keypoints"])  # same pixel convention
        assert (keypoints[:, 2] == 1.0).all()
        np.testing.assert_array_equal(descriptors, ours["descriptors"])


def test_d2net_files_import_back_into_the_same_features(run_dir, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(run_dir.parent / "scene" / "images", images)
    exported = tmp_path / "npz"
    assert run_cli(export.cli, ["d2net-npz", "--input", str(run_dir), "--output", str(exported)]) == 0
    for path in exported.iterdir():
        shutil.copy(path, images / path.name)  # the official layout: <image path>.d2-net
    output = tmp_path / "imported.h5"
    assert run_cli(export.cli, ["import-d2net", "--images", str(images), "--output", str(output)]) == 0
    names = list_h5_names(run_dir / "features.h5")
    assert list_h5_names(output) == names
    for name in names:
        ours, back = read_features(run_dir / "features.h5", name), read_features(output, name)
        for key in ("keypoints", "descriptors", "scores", "image_size"):
            np.testing.assert_array_equal(back[key], ours[key])
    with h5py.File(output, "r") as f:
        assert f.attrs["weights"] == IMPORTED_WEIGHTS and int(f.attrs["descriptor_dim"]) == 512
    # an existing output is only replaced on request
    assert run_cli(export.cli, ["import-d2net", "--images", str(images), "--output", str(output)]) == EXIT_BAD_INPUT
    assert run_cli(export.cli, ["import-d2net", "--images", str(images), "--output", str(output),
                                "--overwrite"]) == 0


def test_kapture_export_is_read_back_by_kapture_with_the_same_numbers(run_dir, tmp_path):
    kapture = pytest.importorskip("kapture", reason="kapture is an optional extra: pip install 'd2_sfm[kapture]'")
    from kapture.io.csv import kapture_from_dir
    from kapture.io.features import (get_keypoints_fullpath, get_matches_fullpath, image_keypoints_from_file,
                                     image_matches_from_file)
    from kapture.io.records import get_image_fullpath

    out = tmp_path / "kapture"
    assert run_cli(export.cli, ["kapture", "--input", str(run_dir), "--output", str(out)]) == 0
    data = kapture_from_dir(str(out))
    model = pycolmap.Reconstruction(str(run_dir / "sfm"))
    names = list_h5_names(run_dir / "features.h5")
    assert sorted(name for _, _, name in kapture.flatten(data.records_camera)) == names
    assert len(data.trajectories) == model.num_reg_images()
    keypoints = data.keypoints["d2net"]
    assert sorted(keypoints) == names
    for name in names:
        stored = image_keypoints_from_file(get_keypoints_fullpath("d2net", str(out), name), keypoints.dtype,
                                           keypoints.dsize)
        ours = read_features(run_dir / "features.h5", name)["keypoints"]
        np.testing.assert_allclose(stored[:, :2], ours + 0.5)  # COLMAP's pixel convention
        image_dir = Path(json.loads((run_dir / "summary.json").read_text())["images"])
        assert (out / "sensors" / "records_data" / name).resolve() == (image_dir / name).resolve()
        assert get_image_fullpath(str(out), name).endswith(name)
    expected = h5_match_counts(run_dir)
    assert set(data.matches["d2net"]) == set(expected)
    for pair, count in expected.items():
        table = image_matches_from_file(get_matches_fullpath(pair, "d2net", str(out)))
        assert len(table) == count
    assert len(data.points3d) == model.num_points3D()
    assert data.observations.observations_number() == model.compute_num_observations()
    for image in model.images.values():  # poses: world-to-camera, as in COLMAP
        timestamp = names.index(image.name)
        (sensor_id,) = data.trajectories[timestamp].keys()
        pose = data.trajectories[timestamp, sensor_id]
        np.testing.assert_allclose(pose.t.ravel(), image.cam_from_world().translation, atol=1e-9)


@pytest.mark.parametrize("case", ["missing input", "no features", "output is input", "output not empty",
                                  "no model"])
def test_export_refuses_bad_folders_with_one_line(run_dir, tmp_path, case, caplog):
    source, output, command = run_dir, tmp_path / "out", "colmap-text"
    if case == "missing input":
        source = tmp_path / "nowhere"
    elif case == "no features":
        source = tmp_path / "empty"
        source.mkdir()
    elif case == "output is input":
        output = run_dir
        command = "d2net-npz"
    elif case == "output not empty":
        output.mkdir()
        (output / "keep.txt").write_text("user file")
    elif case == "no model":
        source = tmp_path / "nomodel"
        source.mkdir()
        shutil.copy(run_dir / "features.h5", source / "features.h5")
    before = sorted(p.name for p in run_dir.iterdir())
    assert run_cli(export.cli, [command, "--input", str(source), "--output", str(output)]) == EXIT_BAD_INPUT
    assert sorted(p.name for p in run_dir.iterdir()) == before
    assert not output.with_name(output.name + ".partial").exists()
    if case == "output not empty":
        assert (output / "keep.txt").read_text() == "user file"


# ----------------------------------------------------------------------------------------------
# Malformed official files


def write_image(path, size=(64, 48)):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size[1], size[0], 3), 128, np.uint8))


def good_arrays(n=5, dim=512):
    rng = np.random.default_rng(0)
    keypoints = np.concatenate([rng.uniform(0, 40, (n, 2)), np.ones((n, 1))], axis=1).astype(np.float32)
    return {"keypoints": keypoints, "scores": rng.random(n).astype(np.float32),
            "descriptors": rng.standard_normal((n, dim)).astype(np.float32)}


def save(path, **arrays):
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def corrupt(case, path):
    arrays = good_arrays()
    if case == "missing":
        return
    if case == "not npz":
        path.write_text("keypoints scores descriptors")
    elif case == "truncated":
        save(path, **arrays)
        path.write_bytes(path.read_bytes()[:300])
    elif case == "missing key":
        del arrays["scores"]
        save(path, **arrays)
    elif case == "wrong shape":
        arrays["descriptors"] = arrays["descriptors"][:3]
        save(path, **arrays)
    elif case == "nan":
        arrays["keypoints"][2, 0] = np.nan
        save(path, **arrays)
    elif case == "pickle":
        arrays["scores"] = np.array([{"a": 1}] * 5, dtype=object)
        save(path, **arrays)
    elif case == "outside image":
        arrays["keypoints"][0, 0] = 500.0
        save(path, **arrays)
    elif case == "forged size":
        save(path, **arrays)
        header = np.lib.format.header_data_from_array_1_0(arrays["descriptors"])
        forged = dict(header, shape=(10**9, 512))
        with zipfile.ZipFile(path) as archive:
            members = {n: archive.read(n) for n in archive.namelist()}
        import io
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(buffer, forged)
        members["descriptors.npy"] = buffer.getvalue() + arrays["descriptors"].tobytes()
        with zipfile.ZipFile(path, "w") as archive:
            for name, content in members.items():
                archive.writestr(name, content)


CASES = ["missing", "not npz", "truncated", "missing key", "wrong shape", "nan", "pickle", "outside image",
         "forged size"]


@pytest.mark.parametrize("case", CASES)
def test_import_rejects_malformed_d2net_files_naming_them(tmp_path, case):
    images = tmp_path / "images"
    write_image(images / "a.png")
    write_image(images / "sub" / "b.png")
    save(images / "a.png.d2-net", **good_arrays())
    corrupt(case, images / "sub" / "b.png.d2-net")
    output = tmp_path / "features.h5"
    with pytest.raises(D2NetFileError, match="b.png"):
        import_d2net_npz(images, ["a.png", "sub/b.png"], output)
    assert not output.exists()


def test_import_rejects_mixed_descriptor_sizes_and_accepts_two_column_keypoints(tmp_path):
    images = tmp_path / "images"
    write_image(images / "a.png")
    write_image(images / "b.png")
    save(images / "a.png.d2-net", **good_arrays())
    save(images / "b.png.d2-net", **good_arrays(dim=128))
    with pytest.raises(D2NetFileError, match="descriptor sizes"):
        import_d2net_npz(images, ["a.png", "b.png"], tmp_path / "f.h5")
    arrays = good_arrays()
    arrays["keypoints"] = arrays["keypoints"][:, :2]
    save(images / "b.png.d2-net", **arrays)
    summary = import_d2net_npz(images, ["a.png", "b.png"], tmp_path / "f.h5")
    assert summary.num_keypoints == {"a.png": 5, "b.png": 5}
    assert read_d2net_file(images / "b.png.d2-net").keypoints.shape == (5, 3)


def test_kapture_export_of_a_localize_folder_adds_localized_queries(run_dir, tmp_path):
    kapture = pytest.importorskip("kapture", reason="kapture is an optional extra: pip install 'd2_sfm[kapture]'")
    from kapture.io.csv import kapture_from_dir
    from d2_sfm.localization.estimation import QueryResult

    folder = tmp_path / "loc"
    folder.mkdir()
    shutil.copytree(run_dir / "sfm", folder / "sfm_d2")
    for source, target in (("features.h5", "features.h5"), ("pairs.txt", "pairs-db-covis.txt"),
                           ("matches.h5", "matches-db.h5")):
        shutil.copy(run_dir / source, folder / target)
    # the unregistered view plays a localized query (its pose borrowed from a registered one)
    model = pycolmap.Reconstruction(str(run_dir / "sfm"))
    registered = sorted(im.name for im in model.images.values())
    query = next(n for n in list_h5_names(run_dir / "features.h5") if n not in registered)
    pose = model.find_image_with_name(registered[0]).cam_from_world()
    (folder / "summary.json").write_text(json.dumps({"dataset": "aachen_v1_1", "queries": [
        QueryResult(query, pose, 50, 80, 3, [registered[0]]).to_json()]}))
    out = tmp_path / "kapture"
    assert run_cli(export.cli, ["kapture", "--input", str(folder), "--output", str(out),
                                "--image-files", "none"]) == 0
    data = kapture_from_dir(str(out))
    assert len(data.trajectories) == model.num_reg_images() + 1
    sensor = next(s for _, s, name in kapture.flatten(data.records_camera) if name == query)
    assert data.sensors[sensor].camera_type == kapture.CameraType.UNKNOWN_CAMERA
    assert not (out / "sensors" / "records_data").exists()


def test_reconstruct_and_match_accept_official_d2net_files(run_dir, tmp_path):
    """Official .d2-net files next to the images replace extraction: converted once, same results."""
    scene_images = run_dir.parent / "scene" / "images"
    images = tmp_path / "images"
    shutil.copytree(scene_images, images)
    assert run_cli(export.cli, ["d2net-npz", "--input", str(run_dir), "--output", str(tmp_path / "npz")]) == 0
    for path in (tmp_path / "npz").iterdir():
        shutil.copy(path, images / path.name)
    config = reconstruct.ReconstructionConfig(import_d2net=True, extraction=ExtractionConfig(max_edge=320),
                                              refine=RefineConfig(mode="none"))  # as the session's run
    summary = reconstruct.main(images, tmp_path / "out", config)
    assert summary.data["num_registered"] == json.loads((run_dir / "summary.json").read_text())["num_registered"]
    for name in list_h5_names(run_dir / "features.h5"):
        ours, imported = read_features(run_dir / "features.h5", name), read_features(tmp_path / "out" / "features.h5", name)
        np.testing.assert_array_equal(ours["keypoints"], imported["keypoints"])
        np.testing.assert_array_equal(ours["descriptors"], imported["descriptors"])
    with h5py.File(tmp_path / "out" / "features.h5", "r") as f:
        assert f.attrs["weights"] == IMPORTED_WEIGHTS
    stamp = (tmp_path / "out" / "features.h5").stat().st_mtime_ns
    reconstruct.main(images, tmp_path / "out", config)  # unchanged .d2-net files: not converted again
    assert (tmp_path / "out" / "features.h5").stat().st_mtime_ns == stamp

    from d2_sfm import match
    features, matches = tmp_path / "imported.h5", tmp_path / "m.h5"
    argv = ["--pairs", str(run_dir / "pairs.txt"), "--features", str(features), "--output", str(matches),
            "--import-d2net", str(images)]
    assert run_cli(match.cli, argv) == 0
    assert h5_match_counts(run_dir) == {k: len(read_matches(matches, *k)[0]) for k in h5_match_counts(run_dir)}
    stamp = features.stat().st_mtime_ns
    assert run_cli(match.cli, argv) == 0
    assert features.stat().st_mtime_ns == stamp
    assert run_cli(match.cli, [*argv[:2], "--features", str(run_dir / "features.h5"), *argv[4:]]) == EXIT_BAD_INPUT
