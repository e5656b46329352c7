"""h5io on real HDF5 files in tmp_path: pair keys, features round trip, provenance, atomic writes."""
import h5py
import numpy as np
import pytest

from d2_sfm.errors import D2SfmError
from d2_sfm.h5io import (FEATURE_ID, H5FormatError, atomic_h5, find_pair, list_h5_names, names_to_pair,
                         names_to_pair_old, prune_incomplete, read_features, read_keypoints, read_matches,
                         write_features, write_matches)


def features(seed: int, count: int = 5, dim: int = 8):
    rng = np.random.default_rng(seed)
    keypoints = rng.uniform(0, 50, (count, 2)).astype(np.float32)
    descriptors = rng.normal(size=(count, dim)).astype(np.float32)
    scores = rng.uniform(size=count).astype(np.float32)
    return keypoints, descriptors, scores


def test_names_to_pair_follows_hloc():
    assert names_to_pair("a/b.jpg", "c.jpg") == "a-b.jpg/c.jpg"
    assert names_to_pair_old("a/b.jpg", "c.jpg") == "a-b.jpg_c.jpg"


def test_features_round_trip_with_nested_names(tmp_path):
    path = tmp_path / "features.h5"
    keypoints, descriptors, scores = features(0)
    with atomic_h5(path) as f:
        write_features(f, "day/db/img 1.jpg", keypoints, descriptors, scores, (640, 480))
        write_features(f, "top.png", *features(1), (32, 24))
    assert list_h5_names(path) == ["day/db/img 1.jpg", "top.png"]
    with h5py.File(path, "r") as f:
        assert isinstance(f["day"]["db"], h5py.Group)  # nested groups, as hloc
        assert f["day/db/img 1.jpg/descriptors"].shape == (8, 5)  # stored (D, N)
    read = read_features(path, "day/db/img 1.jpg")
    np.testing.assert_array_equal(read["keypoints"], keypoints)
    np.testing.assert_array_equal(read["descriptors"], descriptors)
    np.testing.assert_array_equal(read["scores"], scores)
    assert read["image_size"].tolist() == [640, 480]
    np.testing.assert_array_equal(read_keypoints(path, "top.png"), features(1)[0])
    with pytest.raises(H5FormatError, match="missing.jpg"):
        read_features(path, "missing.jpg")


def test_feature_id_changes_when_the_data_changes(tmp_path):
    keypoints, descriptors, scores = features(0)
    with atomic_h5(tmp_path / "f.h5") as f:
        same = write_features(f, "a.jpg", keypoints, descriptors, scores, (64, 48))
        again = write_features(f, "b.jpg", keypoints, descriptors, scores, (64, 48))
        moved = write_features(f, "c.jpg", keypoints + 1, descriptors, scores, (64, 48))
        other = write_features(f, "d.jpg", keypoints, -descriptors, scores, (64, 48))
        half = write_features(f, "e.jpg", keypoints, descriptors, scores, (64, 48), half_descriptors=True)
        assert str(f["a.jpg"].attrs[FEATURE_ID]) == same
    assert same == again
    assert len({same, moved, other, half}) == 4


def test_find_pair_uses_old_style_keys_only_in_old_style_files(tmp_path):
    old = tmp_path / "old.h5"
    with h5py.File(old, "w") as f:  # as hloc before 1.3 wrote it: flat name0_name1 groups
        group = f.create_group(names_to_pair_old("a.jpg", "b.jpg"))
        group.create_dataset("matches0", data=np.array([1, -1, 0], np.int32))
    with h5py.File(old, "r") as f:
        assert find_pair(f, "a.jpg", "b.jpg") == ("a.jpg_b.jpg", False)
        assert find_pair(f, "b.jpg", "a.jpg") == ("a.jpg_b.jpg", True)
    pairs, _ = read_matches(old, "b.jpg", "a.jpg")
    assert pairs.tolist() == [[1, 0], [0, 2]]

    new = tmp_path / "new.h5"
    with atomic_h5(new) as f:
        write_matches(f, "x.jpg", "y.jpg", np.array([0], np.int32), np.ones(1))
        # a flat old-style key beside new-style groups is ambiguous: never looked up
        f.create_group("a.jpg_b.jpg").create_dataset("matches0", data=np.array([0], np.int32))
    with h5py.File(new, "r") as f:
        assert find_pair(f, "y.jpg", "x.jpg") == ("x.jpg/y.jpg", True)
        with pytest.raises(H5FormatError, match="new.h5"):
            find_pair(f, "a.jpg", "b.jpg")


def test_prune_incomplete_removes_items_without_their_marker(tmp_path):
    with atomic_h5(tmp_path / "f.h5") as f:
        write_features(f, "done/a.jpg", *features(0), (64, 48))
        write_features(f, "cut/b.jpg", *features(1), (64, 48))
        del f["cut/b.jpg"].attrs[FEATURE_ID]  # as left by a kill before the last attribute
        assert prune_incomplete(f, FEATURE_ID, "keypoints") == ["cut/b.jpg"]
        assert prune_incomplete(f, FEATURE_ID, "keypoints") == []
    assert list_h5_names(tmp_path / "f.h5") == ["done/a.jpg"]


def test_atomic_h5_keeps_the_original_on_an_exception(tmp_path):
    path = tmp_path / "f.h5"
    with atomic_h5(path) as f:
        write_features(f, "a.jpg", *features(0), (64, 48))
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_h5(path) as f:
            write_features(f, "b.jpg", *features(1), (64, 48))
            raise RuntimeError("boom")
    assert path.read_bytes() == before
    assert list_h5_names(path) == ["a.jpg"]
    with atomic_h5(path) as f:  # the kept .partial is resumed: b.jpg is there
        assert "b.jpg" in f
    assert list_h5_names(path) == ["a.jpg", "b.jpg"]


def test_a_file_that_is_not_hdf5_is_one_error_naming_it(tmp_path):
    path = tmp_path / "features.h5"
    path.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(D2SfmError, match="features.h5"):
        list_h5_names(path)
    with pytest.raises(H5FormatError, match="features.h5"):
        with atomic_h5(path):
            pass
    assert path.read_bytes() == b"not an hdf5 file at all"
