"""Reading COLMAP model folders (cameras, images, points3D as .bin or .txt), validated first.

pycolmap trusts the counts in a binary model: a truncated or forged `points3D.bin` (or an image
name without its terminating NUL) makes it reserve memory for billions of records or read past
the end without bound. `validate_model_folder` walks every binary file once with the record
layouts of COLMAP 4 (`reconstruction_io_binary.cc`), checking each declared count against the
bytes that are left, and raises ModelError naming the file and the problem. Cost: one pass over
memory-mapped files, no allocation proportional to a declared count.
"""
from __future__ import annotations

import mmap
import struct
from pathlib import Path

import numpy as np

from .colmap import pycolmap
from .errors import D2SfmError

MODEL_FILES = ("cameras", "images", "points3D")
OPTIONAL_FILES = ("rigs", "frames")  # COLMAP >= 3.12 / 4 models
U64 = struct.Struct("<Q")
U32 = struct.Struct("<I")
I32 = struct.Struct("<i")
CAMERA = struct.Struct("<IiQQ")  # camera_id, model_id, width, height (+ params)
IMAGE = struct.Struct("<I7dI")  # image_id, qvec (w, x, y, z), tvec, camera_id (+ name, points)
POINT3D = struct.Struct("<Q3d3BdQ")  # point3D_id, xyz, rgb, error, track_length (+ track)
FRAME = struct.Struct("<II7dI")  # frame_id, rig_id, rig_from_world, num_data_ids (+ data ids)
POINT2D_SIZE, TRACK_ELEMENT_SIZE, DATA_ID_SIZE = 24, 8, 16
SENSOR_SIZE, POSE_SIZE = 8, 56


class ModelError(D2SfmError, ValueError):
    """A folder that does not hold a (readable) COLMAP model."""


def camera_num_params(model: pycolmap.CameraModelId) -> int:
    """Number of parameters of a camera model (pycolmap's own count)."""
    return len(pycolmap.Camera.create_from_model_id(0, model, 1.0, 1, 1).params)


def camera_model_num_params() -> dict[int, int]:
    """{COLMAP camera model id: number of parameters}."""
    return {int(model.value): camera_num_params(model)
            for name, model in pycolmap.CameraModelId.__members__.items() if name != "INVALID"}


class RecordReader:
    """Bounds-checked sequential reads over a memory-mapped file; every error names the file."""

    def __init__(self, path: Path, data: mmap.mmap | bytes):
        self.path, self.data, self.offset, self.size = path, data, 0, len(data)

    def fail(self, what: str) -> ModelError:
        return ModelError(f"{self.path}: {what} (file of {self.size} bytes; truncated or not a COLMAP model file?)")

    def need(self, nbytes: int, what: str) -> None:
        if nbytes < 0 or self.offset + nbytes > self.size:
            raise self.fail(f"{what} needs {nbytes} bytes at offset {self.offset}, only "
                            f"{self.size - self.offset} left")

    def read(self, layout: struct.Struct, what: str) -> tuple:
        self.need(layout.size, what)
        values = layout.unpack_from(self.data, self.offset)
        self.offset += layout.size
        return values

    def skip(self, nbytes: int, what: str) -> None:
        self.need(nbytes, what)
        self.offset += nbytes

    def count(self, layout: struct.Struct, minimum_record: int, what: str) -> int:
        """A declared count whose records (each at least `minimum_record` bytes) must fit."""
        (count,) = self.read(layout, f"the number of {what}")
        if count * minimum_record > self.size - self.offset:
            raise self.fail(f"declares {count} {what} (at least {count * minimum_record} bytes) but only "
                            f"{self.size - self.offset} bytes follow")
        return count

    def name(self, what: str) -> None:
        end = self.data.find(b"\0", self.offset)
        if end < 0:
            raise self.fail(f"{what}: name without its terminating NUL byte")
        self.offset = end + 1

    def finish(self) -> None:
        if self.offset != self.size:
            raise self.fail(f"{self.size - self.offset} unexpected bytes after the last record")


def check_cameras(reader: RecordReader) -> None:
    num_params = camera_model_num_params()
    for i in range(reader.count(U64, CAMERA.size, "cameras")):
        camera_id, model_id, width, height = reader.read(CAMERA, f"camera {i}")
        if model_id not in num_params:
            raise reader.fail(f"camera {camera_id} has unknown camera model id {model_id}")
        if width <= 0 or height <= 0:
            raise reader.fail(f"camera {camera_id} has size {width} x {height}")
        reader.skip(8 * num_params[model_id], f"the parameters of camera {camera_id}")


def check_images(reader: RecordReader) -> None:
    for i in range(reader.count(U64, IMAGE.size + 1 + U64.size, "images")):
        image_id = reader.read(IMAGE, f"image {i}")[0]
        reader.name(f"image {image_id}")
        num_points = reader.count(U64, POINT2D_SIZE, f"2D points of image {image_id}")
        reader.skip(POINT2D_SIZE * num_points, f"the 2D points of image {image_id}")


def check_points3D(reader: RecordReader) -> None:
    for i in range(reader.count(U64, POINT3D.size, "3D points")):
        values = reader.read(POINT3D, f"3D point {i}")
        track_length = values[-1]
        if track_length * TRACK_ELEMENT_SIZE > reader.size - reader.offset:
            raise reader.fail(f"3D point {values[0]} declares a track of {track_length} elements, "
                              "more than the bytes left")
        reader.offset += track_length * TRACK_ELEMENT_SIZE


def check_frames(reader: RecordReader) -> None:
    for i in range(reader.count(U64, FRAME.size, "frames")):
        values = reader.read(FRAME, f"frame {i}")
        reader.skip(DATA_ID_SIZE * values[-1], f"the data ids of frame {values[0]}")


def check_rigs(reader: RecordReader) -> None:
    for i in range(reader.count(U64, 2 * U32.size, "rigs")):
        rig_id, num_sensors = reader.read(struct.Struct("<II"), f"rig {i}")
        if num_sensors > 0:
            reader.skip(SENSOR_SIZE, f"the reference sensor of rig {rig_id}")
        if (num_sensors - 1) * (SENSOR_SIZE + 1) > reader.size - reader.offset:
            raise reader.fail(f"rig {rig_id} declares {num_sensors} sensors, more than the bytes left")
        for _ in range(max(num_sensors - 1, 0)):
            reader.skip(SENSOR_SIZE, f"a sensor of rig {rig_id}")
            (has_pose,) = reader.read(struct.Struct("<B"), f"a sensor of rig {rig_id}")
            if has_pose:
                reader.skip(POSE_SIZE, f"a sensor pose of rig {rig_id}")


CHECKS = {"cameras": check_cameras, "images": check_images, "points3D": check_points3D,
          "frames": check_frames, "rigs": check_rigs}


def check_binary_file(path: Path) -> None:
    """Walk one binary model file; ModelError naming it when a record does not fit."""
    try:
        with open(path, "rb") as handle:
            if path.stat().st_size == 0:
                raise ModelError(f"{path}: empty file (expected a COLMAP {path.stem} file)")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                reader = RecordReader(path, data)
                CHECKS[path.stem](reader)
                reader.finish()
    except OSError as error:
        raise ModelError(f"{path}: cannot read ({error.strerror or error})") from None


def check_text_file(path: Path) -> None:
    """Text models: readable UTF-8 (pycolmap parses them line by line, bounded by the file)."""
    try:
        with open(path, encoding="utf-8") as handle:
            for _ in handle:
                pass
    except UnicodeDecodeError as error:
        raise ModelError(f"{path}: not UTF-8 text at byte {error.start} (expected a COLMAP {path.stem}.txt)") from None
    except OSError as error:
        raise ModelError(f"{path}: cannot read ({error.strerror or error})") from None


def model_format(path: Path) -> str:
    """'.bin' or '.txt' for a model folder; ModelError when a required file is missing."""
    for ext in (".bin", ".txt"):
        if (path / f"images{ext}").is_file():
            missing = [name + ext for name in MODEL_FILES if not (path / f"{name}{ext}").is_file()]
            if missing:
                raise ModelError(f"{path}: COLMAP model without {', '.join(missing)}")
            return ext
    raise ModelError(f"{path} is not a COLMAP model folder (expected cameras, images, points3D as .bin or .txt)")


def validate_model_folder(path: Path) -> Path:
    """Check every model file of `path` structurally before pycolmap reads it; returns `path`."""
    path = Path(path)
    ext = model_format(path)
    for name in MODEL_FILES + OPTIONAL_FILES:
        file = path / f"{name}{ext}"
        if file.is_file():
            (check_binary_file if ext == ".bin" else check_text_file)(file)
    return path


def read_model(reference: Path | pycolmap.Reconstruction,
               error: type[D2SfmError] = ModelError) -> pycolmap.Reconstruction:
    """A reconstruction as is, or read from a validated model folder; `error` (the calling step's
    error type) names the folder or file when it holds no readable model."""
    if isinstance(reference, pycolmap.Reconstruction):
        return reference
    path = Path(reference)
    try:
        validate_model_folder(path)
    except ModelError as problem:
        if error is ModelError:
            raise
        raise error(str(problem)) from None
    try:
        model = pycolmap.Reconstruction(str(path))
    except Exception as problem:  # pycolmap raises plain RuntimeError / ValueError on bad content
        raise error(f"{path}: pycolmap cannot read this COLMAP model ({last_line(problem)})") from None
    for image in model.images.values():
        if image.has_pose and not np.isfinite(image.cam_from_world().matrix()).all():
            raise error(f"{path}: the pose of image {image.name} is not finite (NaN or inf)")
    return model


def last_line(problem: Exception) -> str:
    """The last line of a (multi-line, C++-flavoured) pycolmap message, or its type."""
    lines = str(problem).strip().splitlines()
    return lines[-1] if lines else type(problem).__name__
