"""Files of other tools or stale ones, and out-of-range options: one clear error, never garbage."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from d2_sfm.colmap_db import VerificationConfig
from d2_sfm.errors import ConfigError
from d2_sfm.extractor import ExtractionConfig, resolve_device
from d2_sfm.h5io import H5FormatError, read_image_size, read_keypoints, read_matches
from d2_sfm.matching import MatcherConfig
from d2_sfm.visualize import save_overview


@pytest.fixture
def files(tmp_path):
    features, matches = tmp_path / "f.h5", tmp_path / "m.h5"
    with h5py.File(features, "w") as f:
        f.create_group("a.jpg")["keypoints"] = np.zeros((5, 2), np.float32)
        f["a.jpg"]["image_size"] = np.array([100, 80])
        f.create_group("b.jpg")["keypoints"] = np.zeros((3, 3), np.float32)  # (N, 3): not hloc's layout
        f["b.jpg"]["image_size"] = np.array([0, 80])
        f.create_group("c.jpg")["keypoints"] = np.full((2, 2), np.nan, np.float32)
    with h5py.File(matches, "w") as f:
        group = f.create_group("a.jpg").create_group("d.jpg")
        group["matches0"] = np.array([0, -1, 7, 1, -1], np.int32)  # 7: past d.jpg's 4 keypoints
        group["matching_scores0"] = np.ones(5, np.float16)
    return features, matches


def test_keypoints_and_sizes_are_checked(files):
    features, _ = files
    assert read_keypoints(features, "a.jpg").shape == (5, 2)
    with pytest.raises(H5FormatError, match=r"f.h5: keypoints of 'b.jpg' are float32 \(3, 3\)"):
        read_keypoints(features, "b.jpg")
    with pytest.raises(H5FormatError, match="'c.jpg' contain NaN"):
        read_keypoints(features, "c.jpg")
    with pytest.raises(H5FormatError, match="image_size of 'b.jpg'"):
        read_image_size(features, "b.jpg")
    with pytest.raises(H5FormatError, match="no 'image_size'"):
        read_image_size(features, "c.jpg")


def test_matches_must_fit_the_features(files):
    _, matches = files
    pairs, _ = read_matches(matches, "a.jpg", "d.jpg")  # unchecked: as stored
    assert pairs.tolist() == [[0, 0], [2, 7], [3, 1]]
    with pytest.raises(H5FormatError, match=r"m.h5: matches of \(a.jpg, d.jpg\) do not fit"):
        read_matches(matches, "a.jpg", "d.jpg", (5, 4))
    with pytest.raises(H5FormatError, match="5 entries for 6 keypoints"):
        read_matches(matches, "a.jpg", "d.jpg", (6, 10))
    reverse, _ = read_matches(matches, "d.jpg", "a.jpg", (10, 5))
    assert reverse.tolist() == [[0, 0], [7, 2], [1, 3]]


@pytest.mark.parametrize("make", [
    lambda: MatcherConfig(chunk_size=0), lambda: MatcherConfig(ratio_threshold=1.5),
    lambda: MatcherConfig(distance_threshold=-1), lambda: ExtractionConfig(max_keypoints=0),
    lambda: ExtractionConfig(max_edge=-5), lambda: ExtractionConfig(max_edge=8),
    lambda: VerificationConfig(max_error=-1), lambda: VerificationConfig(min_pair_inlier_ratio=-0.5),
])
def test_out_of_range_options_are_refused(make):
    with pytest.raises(ConfigError, match="invalid"):
        make()


def test_devices_and_sizes_are_checked(tmp_path):
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="bogus"):
        resolve_device("bogus")
    if not __import__("torch").cuda.is_available():
        with pytest.raises(ConfigError, match="not available"):
            resolve_device("cuda")
    import pycolmap
    with pytest.raises(Exception, match="outside"):
        save_overview(pycolmap.Reconstruction(), tmp_path / "o.png", size=-5)
    with pytest.raises(Exception, match="unknown extension"):
        save_overview(pycolmap.Reconstruction(), tmp_path / "o.txt")


def test_matches_recording_other_features_are_stale(tmp_path):
    matches = tmp_path / "m.h5"
    with h5py.File(matches, "w") as f:
        group = f.create_group("a.jpg").create_group("b.jpg")
        group["matches0"] = np.array([0, -1], np.int32)
        group["matching_scores0"] = np.ones(2, np.float16)
        group.attrs["features"] = "aaaa:bbbb"
    assert len(read_matches(matches, "a.jpg", "b.jpg", (2, 1), ("aaaa", "bbbb"))[0]) == 1
    assert len(read_matches(matches, "b.jpg", "a.jpg", (1, 2), ("bbbb", "aaaa"))[0]) == 1  # stored reversed
    with pytest.raises(H5FormatError, match="other features than the current ones"):
        read_matches(matches, "a.jpg", "b.jpg", (2, 1), ("aaaa", "cccc"))
