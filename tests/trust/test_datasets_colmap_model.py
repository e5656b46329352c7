"""COLMAP model folders are validated before pycolmap reads them (issue: Trust, item 5).

pycolmap trusts the counts of binary models: a truncated points3D.bin or a forged count makes it
allocate without bound. Every damaged file here must be one ModelError naming it, at once.
"""
from __future__ import annotations

import struct
from pathlib import Path

import cv2  # noqa: F401  (pycolmap 4.2.1 must be imported after cv2)
import numpy as np
import pycolmap
import pytest

from d2_sfm.colmap_model import ModelError, read_model, validate_model_folder
from d2_sfm.localization import LocalizationError
from d2_sfm.localization.model import load_model


def write_model(folder: Path, num_images: int = 3, num_points: int = 40) -> Path:
    """A small real model: PINHOLE + SIMPLE_RADIAL cameras, posed images with 2D points, and 3D
    points with tracks, written by pycolmap (with rigs.bin and frames.bin)."""
    rng = np.random.default_rng(0)
    model = pycolmap.Reconstruction()
    for camera_id, (name, params) in enumerate((("PINHOLE", [100, 100, 50, 40]),
                                                ("SIMPLE_RADIAL", [90, 50, 40, 0.01])), start=1):
        model.add_camera_with_trivial_rig(pycolmap.Camera(model=name, width=100, height=80, params=params,
                                                          camera_id=camera_id))
    xyz = rng.uniform(-1, 1, (num_points, 3)) + [0, 0, 5]
    for image_id in range(1, num_images + 1):
        image = pycolmap.Image(name=f"sub dir/image {image_id}.jpg", camera_id=1 + image_id % 2,
                               image_id=image_id)
        image.points2D = pycolmap.Point2DList([pycolmap.Point2D(rng.uniform(0, 80, 2)) for _ in range(num_points)])
        model.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(), [0.1 * image_id, 0, 0]))
    for k in range(num_points):
        track = pycolmap.Track()
        for image_id in range(1, num_images + 1):
            track.add_element(image_id, k)
        model.add_point3D(xyz[k], track)
    folder.mkdir(parents=True, exist_ok=True)
    model.write(str(folder))
    return folder


@pytest.fixture()
def model_dir(tmp_path):
    return write_model(tmp_path / "model")


def test_a_valid_model_passes_and_reads(model_dir):
    assert {p.name for p in model_dir.iterdir()} >= {"cameras.bin", "images.bin", "points3D.bin"}
    validate_model_folder(model_dir)
    model = read_model(model_dir)
    assert model.num_images() == 3 and model.num_points3D() == 40


@pytest.mark.parametrize("name", ["cameras.bin", "images.bin", "points3D.bin", "frames.bin", "rigs.bin"])
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.97])
def test_every_truncation_is_one_named_error(model_dir, name, fraction):
    path = model_dir / name
    if not path.exists():
        pytest.skip(f"pycolmap wrote no {name}")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)] if fraction else b"")
    with pytest.raises(ModelError, match=name.replace(".", r"\.")):
        read_model(model_dir)


def test_one_byte_short_or_long_is_caught(model_dir):
    path = model_dir / "points3D.bin"
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    with pytest.raises(ModelError, match="points3D.bin"):
        validate_model_folder(model_dir)
    path.write_bytes(data + b"\0")
    with pytest.raises(ModelError, match="unexpected bytes"):
        validate_model_folder(model_dir)


@pytest.mark.parametrize("name, offset", [("points3D.bin", 0), ("images.bin", 0), ("cameras.bin", 0),
                                          ("points3D.bin", 8 + 43)])  # first point's track length
def test_forged_huge_counts_are_refused_without_allocating(model_dir, name, offset):
    path = model_dir / name
    data = bytearray(path.read_bytes())
    data[offset:offset + 8] = struct.pack("<Q", 2**62)
    path.write_bytes(bytes(data))
    with pytest.raises(LocalizationError, match=name.replace(".", r"\.")):
        load_model(model_dir)  # the calling step's error type, naming the file


def test_an_image_name_without_its_nul_and_a_huge_point_count(model_dir):
    path = model_dir / "images.bin"
    data = path.read_bytes()
    name_start = 8 + 64
    nul = data.index(b"\0", name_start)
    path.write_bytes(struct.pack("<Q", 1) + data[8:nul])  # one image, the file ends inside its name
    with pytest.raises(ModelError, match="NUL"):
        validate_model_folder(model_dir)
    forged = bytearray(data)
    forged[nul + 1:nul + 9] = struct.pack("<Q", 10**15)  # num_points2D of the first image
    path.write_bytes(bytes(forged))
    with pytest.raises(ModelError, match="2D points"):
        validate_model_folder(model_dir)


def test_unknown_camera_model_and_missing_files(model_dir):
    path = model_dir / "cameras.bin"
    data = bytearray(path.read_bytes())
    data[8 + 4:8 + 8] = struct.pack("<i", 99)
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="camera model id 99"):
        validate_model_folder(model_dir)
    path.unlink()
    with pytest.raises(ModelError, match="cameras.bin"):
        validate_model_folder(model_dir)
    with pytest.raises(ModelError, match="not a COLMAP model folder"):
        validate_model_folder(model_dir.parent / "nowhere")


def test_text_models_with_bad_utf8_are_named(tmp_path):
    model = read_model(write_model(tmp_path / "bin"))
    text_dir = tmp_path / "txt"
    text_dir.mkdir()
    model.write_text(str(text_dir))
    assert read_model(text_dir).num_points3D() == 40
    (text_dir / "images.txt").write_bytes(b"\xff\xfe garbage\n")
    with pytest.raises(ModelError, match="images.txt"):
        read_model(text_dir)
