"""MegaDepth scene files are read without executing anything from them (issue: Trust, item 8)."""
from __future__ import annotations

import os
import pathlib
import zipfile

import numpy as np
import pytest

from d2_sfm.training.megadepth import MegaDepthError, MegaDepthPairs, load_scene

KEYS = dict(intrinsics=np.stack([np.eye(3)] * 2), poses=np.stack([np.eye(4)] * 2),
            overlap_matrix=np.zeros((2, 2)), scale_ratio_matrix=np.ones((2, 2)))


class SystemCall:
    """Pickles as os.system(command): what a crafted scene file would do."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class TouchFile:
    """Pickles as pathlib.Path.touch(path)."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


def write_scene(root: pathlib.Path, payload: object) -> pathlib.Path:
    (root / "scene_info").mkdir(parents=True, exist_ok=True)
    path = root / "scene_info" / "evil.npz"
    np.savez(path, image_paths=np.array(["a.jpg", payload], object), depth_paths=np.array([None, None], object),
             **KEYS)
    return path


@pytest.mark.parametrize("make_payload", [lambda marker: SystemCall(f"touch '{marker}'"),
                                          lambda marker: TouchFile(marker)], ids=["os.system", "Path.touch"])
def test_a_crafted_scene_file_runs_nothing_and_is_named(tmp_path, make_payload):
    marker = tmp_path / "marker"
    path = write_scene(tmp_path, make_payload(marker))
    with pytest.raises(MegaDepthError, match="evil.npz") as error:
        MegaDepthPairs(tmp_path)
    assert not marker.exists()
    assert "refusing" in str(error.value)


def test_official_style_object_arrays_read_like_numpy(tmp_path):
    """Lists of str/None, dicts of int -> array / numpy float, Fortran-ordered plain arrays."""
    path = tmp_path / "scene.npz"
    info = dict(image_paths=np.array(["a.jpg", None, "c.jpg"], object),
                depth_paths=np.array(["a.h5", None, "c.h5"], object),
                points3D_id_to_2D=np.array([{7: np.array([1.5, 2.0])}, {}, {7: np.array([3.0, 4.0]), 9: np.zeros(2)}],
                                           object),
                points3D_id_to_ndepth=np.array([{7: np.float64(0.25)}, {}, {7: 0.5}], object),
                angles=np.asfortranarray(np.arange(9.0).reshape(3, 3)), n_points3D=np.array([1, 0, 2]),
                intrinsics=np.stack([np.eye(3)] * 3), poses=np.stack([np.eye(4)] * 3),
                overlap_matrix=np.zeros((3, 3)), scale_ratio_matrix=np.ones((3, 3)))
    np.savez(path, **info)
    ours = load_scene(path)
    reference = dict(np.load(path, allow_pickle=True))
    assert set(ours) == set(reference)
    for key, value in reference.items():
        assert ours[key].shape == value.shape and ours[key].dtype == value.dtype
        if value.dtype != object:
            np.testing.assert_array_equal(ours[key], value)
            assert ours[key].flags.writeable
    assert list(ours["image_paths"]) == ["a.jpg", None, "c.jpg"]
    np.testing.assert_array_equal(ours["points3D_id_to_2D"][2][7], [3.0, 4.0])
    assert ours["points3D_id_to_ndepth"][0][7] == 0.25


@pytest.mark.parametrize("damage", ["truncated", "not_a_zip", "huge_shape"])
def test_damaged_scene_files_are_one_named_error(tmp_path, damage):
    (tmp_path / "scene_info").mkdir()
    path = tmp_path / "scene_info" / "bad.npz"
    np.savez(path, image_paths=np.array(["a.jpg", None], object), depth_paths=np.array([None, None], object), **KEYS)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "not_a_zip":
        path.write_bytes(b"hello, not a scene file")
    else:  # a plain array whose header claims more elements than its bytes hold (valid zip CRC)
        with zipfile.ZipFile(path) as archive:
            members = {name: archive.read(name) for name in archive.namelist()}
        members["poses.npy"] = members["poses.npy"].replace(b"'shape': (2, 4, 4)", b"'shape': (999999,)")
        with zipfile.ZipFile(path, "w") as archive:
            for name, content in members.items():
                archive.writestr(name, content)
    with pytest.raises(MegaDepthError, match="bad.npz"):
        MegaDepthPairs(tmp_path)


@pytest.mark.parametrize("name", ["/outside/a.jpg", "../x/b.jpg"])
def test_scene_image_paths_stay_inside_the_root(tmp_path, name):
    path = tmp_path / "scene.npz"
    np.savez(path, image_paths=np.array(["Undistorted_SfM/0001/images/a.jpg", name], object),
             depth_paths=np.array([None, None], object), **KEYS)
    with pytest.raises(MegaDepthError, match="scene.npz image_paths"):
        load_scene(path)
