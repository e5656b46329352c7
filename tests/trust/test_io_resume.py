"""Trust in the io layer: resume redoes exactly what changed, foreign files are refused, a kill or a
second writer never corrupts an output, and inputs are checked before anything is deleted."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import cv2
import h5py
import numpy as np
import pytest
from skimage import data as skdata

from d2_sfm import extract, match
from d2_sfm.errors import D2SfmError
from d2_sfm.h5io import H5FormatError, list_h5_names, read_features
from d2_sfm.locking import OutputLockedError, output_lock
from d2_sfm.matching import MatcherConfig


@pytest.fixture(scope="module")
def photos():
    size = (200, 150)
    return {name: cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            for name, image in (("a.jpg", skdata.astronaut()), ("b.jpg", skdata.chelsea()),
                                ("c.jpg", skdata.coffee()))}


@pytest.fixture
def image_dir(tmp_path, photos):
    root = tmp_path / "images"
    root.mkdir()
    for name, image in photos.items():
        cv2.imwrite(str(root / name), image[:, :, ::-1])
    return root


@pytest.fixture(scope="module")
def extractor(hed_extractor_factory):
    return hed_extractor_factory(max_edge=200)


def write_pairs(path, pairs):
    path.write_text("".join(f"{a} {b}\n" for a, b in pairs))
    return path


def pair_groups(path):
    with h5py.File(path, "r") as f:
        return {key: (f[key]["matches0"][()].copy(), dict(f[key].attrs)) for key in list_h5_names(path)}


def test_extract_redoes_exactly_the_changed_image(image_dir, tmp_path, extractor, photos):
    output = tmp_path / "f.h5"
    extract.main(image_dir, output, extractor=extractor)
    before = {n: read_features(output, n)["keypoints"] for n in photos}
    os.utime(image_dir / "b.jpg")  # touched, same content: not redone
    cv2.imwrite(str(image_dir / "a.jpg"), photos["a.jpg"][::-1, :, ::-1].copy())  # new content
    summary = extract.main(image_dir, output, extractor=extractor)
    assert summary.extracted == ["a.jpg"] and summary.redone == ["a.jpg"]
    assert sorted(summary.skipped_existing) == ["b.jpg", "c.jpg"]
    assert not np.array_equal(read_features(output, "a.jpg")["keypoints"], before["a.jpg"])
    assert np.array_equal(read_features(output, "b.jpg")["keypoints"], before["b.jpg"])


def test_resume_with_nothing_to_do_does_not_touch_or_copy_the_output(image_dir, tmp_path, extractor):
    output = tmp_path / "f.h5"
    extract.main(image_dir, output, extractor=extractor)
    stamp = output.stat().st_mtime_ns
    summary = extract.main(image_dir, output, extractor=extractor)
    assert summary.extracted == [] and len(summary.skipped_existing) == 3
    assert output.stat().st_mtime_ns == stamp and not output.with_name("f.h5.partial").exists()


def test_extract_refuses_a_foreign_hloc_file(image_dir, tmp_path, extractor):
    output = tmp_path / "superpoint.h5"
    with h5py.File(output, "w") as f:  # hloc features of another extractor: 256-D, no d2_sfm attributes
        group = f.create_group("x.jpg")
        group["keypoints"] = np.zeros((3, 2), np.float32)
        group["descriptors"] = np.zeros((256, 3), np.float32)
    before = output.read_bytes()
    with pytest.raises(H5FormatError, match="superpoint.h5.*not made by d2_sfm"):
        extract.main(image_dir, output, extractor=extractor)
    assert output.read_bytes() == before


def test_unreadable_partial_is_discarded_and_incomplete_items_redone(image_dir, tmp_path, extractor, caplog):
    output = tmp_path / "f.h5"
    partial = tmp_path / "f.h5.partial"
    partial.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)  # cut by a kill mid-write
    summary = extract.main(image_dir, output, extractor=extractor)
    assert len(summary.extracted) == 3 and not partial.exists()
    assert "Discarding" in caplog.text and str(partial) in caplog.text
    # an item whose completion record is missing (killed between its datasets and its record)
    with h5py.File(output, "a") as f:
        del f["b.jpg"].attrs["feature_id"]
    summary = extract.main(image_dir, output, extractor=extractor)
    assert summary.extracted == ["b.jpg"] and summary.redone == ["b.jpg"]


def test_match_redoes_pairs_of_reextracted_images_and_everything_for_other_settings(
        image_dir, tmp_path, extractor, photos):
    features, matches = tmp_path / "f.h5", tmp_path / "m.h5"
    pairs = write_pairs(tmp_path / "pairs.txt", [("a.jpg", "b.jpg"), ("b.jpg", "c.jpg")])
    extract.main(image_dir, features, extractor=extractor)
    match.main(pairs, features, matches)
    first = pair_groups(matches)
    stamp = matches.stat().st_mtime_ns
    match.main(pairs, features, matches)  # nothing changed: not rewritten
    assert matches.stat().st_mtime_ns == stamp

    cv2.imwrite(str(image_dir / "a.jpg"), cv2.GaussianBlur(photos["a.jpg"], (5, 5), 2)[:, :, ::-1])
    extract.main(image_dir, features, extractor=extractor)
    match.main(pairs, features, matches)
    second = pair_groups(matches)
    assert second["b.jpg/c.jpg"][1] == first["b.jpg/c.jpg"][1]  # untouched pair, same record
    assert second["a.jpg/b.jpg"][1]["features"] != first["a.jpg/b.jpg"][1]["features"]
    num_keypoints = len(read_features(features, "a.jpg")["keypoints"])
    assert len(second["a.jpg/b.jpg"][0]) == num_keypoints  # indexes the new keypoints

    match.main(pairs, features, matches, MatcherConfig(distance_threshold=0.5))
    third = pair_groups(matches)
    assert all(third[k][1]["matcher"] != second[k][1]["matcher"] for k in third)
    with h5py.File(matches, "r") as f:
        assert f.attrs["matcher.distance_threshold"] == 0.5
    assert (third["b.jpg/c.jpg"][0] >= 0).sum() <= (second["b.jpg/c.jpg"][0] >= 0).sum()


def test_match_checks_inputs_before_writing(image_dir, tmp_path, extractor):
    features, matches = tmp_path / "f.h5", tmp_path / "m.h5"
    extract.main(image_dir, features, image_list=["a.jpg", "b.jpg"], extractor=extractor)
    pairs = write_pairs(tmp_path / "pairs.txt", [("a.jpg", "b.jpg"), ("a.jpg", "zzz.jpg")])
    with pytest.raises(H5FormatError, match="zzz.jpg"):
        match.main(pairs, features, matches)
    assert not matches.exists() and not (tmp_path / "m.h5.partial").exists()
    with pytest.raises(D2SfmError, match="unknown extension"):
        match.main(pairs, features, tmp_path / "m.txt")
    not_hdf5 = tmp_path / "f2.h5"
    not_hdf5.write_text("hello")
    with pytest.raises(H5FormatError, match="f2.h5.*not a readable HDF5"):
        match.main(pairs, not_hdf5, matches)


def test_nan_descriptors_and_mixed_dimensions_are_named(tmp_path):
    features = tmp_path / "f.h5"
    with h5py.File(features, "w") as f:
        for name, dim in (("a.jpg", 8), ("b.jpg", 8), ("c.jpg", 16)):
            group = f.create_group(name)
            group["keypoints"] = np.zeros((4, 2), np.float32)
            group["descriptors"] = np.ones((dim, 4), np.float32)
        f["b.jpg"]["descriptors"][0, 1] = np.nan
    pairs = write_pairs(tmp_path / "p1.txt", [("a.jpg", "b.jpg")])
    with pytest.raises(H5FormatError, match="'b.jpg'.*NaN"):
        match.main(pairs, features, tmp_path / "m.h5")
    pairs = write_pairs(tmp_path / "p2.txt", [("a.jpg", "c.jpg")])
    with pytest.raises(H5FormatError, match="mixes descriptor dimensions"):
        match.main(pairs, features, tmp_path / "m.h5")


def test_overwrite_with_a_bad_checkpoint_keeps_the_output(image_dir, tmp_path, extractor):
    output = tmp_path / "f.h5"
    extract.main(image_dir, output, extractor=extractor)
    before = output.read_bytes()
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(D2SfmError, match="bad.pth"):
        extract.main(image_dir, output, weights=str(bad), overwrite=True)
    assert output.read_bytes() == before


def test_a_second_writer_is_refused_at_once_even_without_hdf5_locking(image_dir, tmp_path):
    output = tmp_path / "f.h5"
    env = {**os.environ, "D2_SFM_OFFLINE": "1", "HDF5_USE_FILE_LOCKING": "FALSE"}
    command = [sys.executable, "-m", "d2_sfm.extract", "--images", str(image_dir), "--output", str(output),
               "--max-edge", "200", "--weights", "hed_vgg16"]
    with output_lock(output):  # another process holds the output
        result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert "being written by another d2_sfm process" in result.stderr and "Traceback" not in result.stderr
    assert not output.exists()
    first = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    errors = [first.communicate()[1], second.communicate()[1]]
    codes = sorted([first.returncode, second.returncode])
    assert codes in ([0, 0], [0, 2]), errors  # either one waited for nothing or was refused: never both writing
    assert list_h5_names(output) == ["a.jpg", "b.jpg", "c.jpg"]
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        assert np.isfinite(read_features(output, name)["descriptors"]).all()


def test_the_lock_is_released_when_its_holder_is_killed(tmp_path):
    output = tmp_path / "f.h5"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import time
from d2_sfm.locking import output_lock
with output_lock({str(output)!r}):
    print("locked", flush=True)
    time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(OutputLockedError, match=f"pid {holder.pid}"):
        with output_lock(output):
            pass
    holder.kill()
    holder.wait()
    with output_lock(output):  # free again
        pass


def test_extract_cli_exits_2_when_every_image_fails(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "x.jpg").write_bytes(b"not a jpeg")
    result = subprocess.run([sys.executable, "-m", "d2_sfm.extract", "--images", str(folder), "--output",
                             str(tmp_path / "f.h5"), "--weights", "hed_vgg16"], capture_output=True, text=True,
                            env={**os.environ, "D2_SFM_OFFLINE": "1"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "x.jpg" in result.stderr
