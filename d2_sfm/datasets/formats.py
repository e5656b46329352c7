"""Text formats shared by the localization datasets: intrinsics lists, results (pose) files,
pairs files and VisualSFM NVM v3 models.

Readers accept blank lines and `#` comments (except inside NVM) and raise DatasetError naming the
file and line of the first problem. Writers produce exactly what hloc's parsers read: fields
separated by single spaces, no comments, "\\n" line ends (hloc splits some lines on " ").
Numbers are written with Python's shortest round-trip repr, so write -> read is exact.

Pose files hold `cam_from_world` (world -> camera) with quaternions in COLMAP order w, x, y, z.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..colmap import pycolmap
from ..colmap_model import camera_num_params
from ..paths import UnsafePathError, safe_relative_name
from ..textfiles import read_text
from ..atomic import write_text
from . import DatasetError

logger = logging.getLogger(__name__)


class UnsafeNameError(DatasetError, UnsafePathError):
    """A name in a dataset file that would escape its root folder (absolute or with `..`)."""


# ----------------------------------------------------------------------------------------------
# helpers


def num(value: float) -> str:
    """Shortest text that reads back to the same float (numpy scalars included)."""
    return repr(float(value))


def require_file(path: Path, what: str) -> Path:
    """`path` if it is a file, else DatasetError naming it and what it should hold."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (expected {what})")
    return path


def data_lines(path: Path, what: str, comments: bool = True) -> Iterator[tuple[str, list[str]]]:
    """(`file:line`, whitespace-split fields) of every non-blank, non-comment line of `path`."""
    path = require_file(path, what)
    # strict UTF-8 (one line naming file and line otherwise), size-capped, no NUL bytes
    for lineno, line in enumerate(read_text(path, what).split("\n"), start=1):
        stripped = line.strip()
        if stripped and not (comments and stripped.startswith("#")):
            yield f"{path}:{lineno}", stripped.split()


def parse_floats(fields: Sequence[str], where: str, what: str) -> np.ndarray:
    try:
        values = np.array([float(f) for f in fields], dtype=np.float64)
    except ValueError:
        raise DatasetError(f"{where}: {what} must be numbers, got {' '.join(fields)!r}") from None
    if not np.isfinite(values).all():
        raise DatasetError(f"{where}: {what} must be finite, got {' '.join(fields)!r}")
    return values


def parse_int(field: str, where: str, what: str, minimum: int = 0) -> int:
    try:
        value = int(field)
    except ValueError:
        raise DatasetError(f"{where}: {what} must be an integer, got {field!r}") from None
    if value < minimum:
        raise DatasetError(f"{where}: {what} must be >= {minimum}, got {value}")
    return value


def checked_name(name: str, where: str) -> str:
    """A relative image name that stays inside its root; UnsafeNameError naming `where` if not."""
    try:
        return safe_relative_name(name, where)
    except UnsafePathError as error:
        raise UnsafeNameError(str(error)) from None


# ----------------------------------------------------------------------------------------------
# cameras and poses


def camera_model(name: str, where: str) -> pycolmap.CameraModelId:
    """pycolmap's camera model named `name` (as COLMAP's text files spell it)."""
    if name == "INVALID" or name not in pycolmap.CameraModelId.__members__:
        raise DatasetError(f"{where}: unknown COLMAP camera model {name!r}")
    return pycolmap.CameraModelId.__members__[name]


def camera_from_fields(fields: Sequence[str], where: str) -> pycolmap.Camera:
    """pycolmap.Camera from `MODEL WIDTH HEIGHT params...` with the parameter count checked."""
    if len(fields) < 3:
        raise DatasetError(f"{where}: expected 'MODEL WIDTH HEIGHT params...', got {' '.join(fields)!r}")
    model = camera_model(fields[0], where)
    expected = camera_num_params(model)
    width = parse_int(fields[1], where, "image width", minimum=1)
    height = parse_int(fields[2], where, "image height", minimum=1)
    params = parse_floats(fields[3:], where, f"{model.name} parameters")
    if len(params) != expected:
        raise DatasetError(f"{where}: camera model {model.name} takes {expected} parameters, got {len(params)}")
    return pycolmap.Camera(model=model, width=width, height=height, params=params)


def camera_to_fields(camera: pycolmap.Camera) -> str:
    """`MODEL WIDTH HEIGHT params...` (inverse of camera_from_fields)."""
    params = " ".join(num(p) for p in camera.params)
    return f"{camera.model.name} {camera.width} {camera.height} {params}"


def rigid_from_qt(qvec_wxyz: Sequence[float], tvec: Sequence[float], where: str = "pose") -> pycolmap.Rigid3d:
    """Rigid3d from a COLMAP quaternion (w, x, y, z; normalised here unless it is of unit length
    already) and a translation."""
    q = np.asarray(qvec_wxyz, dtype=np.float64)
    norm = np.linalg.norm(q)
    if not norm > 1e-12:
        raise DatasetError(f"{where}: quaternion {q.tolist()} has zero length")
    # A unit quaternion is taken as is, so that a pose written and read back is bit-identical.
    w, x, y, z = q if abs(norm - 1.0) <= 1e-12 else q / norm
    return pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([x, y, z, w])), np.asarray(tvec, dtype=np.float64))


def qt_from_rigid(pose: pycolmap.Rigid3d) -> tuple[np.ndarray, np.ndarray]:
    """(quaternion w, x, y, z; translation) of a Rigid3d (pycolmap stores x, y, z, w)."""
    x, y, z, w = pose.rotation.quat
    return np.array([w, x, y, z]), np.asarray(pose.translation, dtype=np.float64)


def rigid_from_matrix(matrix: np.ndarray) -> pycolmap.Rigid3d:
    """Rigid3d from a (3, 4) or (4, 4) [R | t] matrix."""
    return pycolmap.Rigid3d(np.ascontiguousarray(np.asarray(matrix, dtype=np.float64)[:3, :4]))


# ----------------------------------------------------------------------------------------------
# intrinsics lists: `name MODEL WIDTH HEIGHT params...`


def read_intrinsics_list(path: Path) -> dict[str, pycolmap.Camera]:
    """{image name: camera} of a list like Aachen's `database_intrinsics.txt` or
    `queries/*_time_queries_with_intrinsics.txt`, in file order."""
    cameras: dict[str, pycolmap.Camera] = {}
    for where, fields in data_lines(path, "lines 'name MODEL WIDTH HEIGHT params...'"):
        if len(fields) < 4:
            raise DatasetError(f"{where}: expected 'name MODEL WIDTH HEIGHT params...', got {' '.join(fields)!r}")
        name = checked_name(fields[0], where)
        if name in cameras:
            raise DatasetError(f"{where}: image {name!r} is listed twice")
        cameras[name] = camera_from_fields(fields[1:], where)
    return cameras


def write_intrinsics_list(path: Path, cameras: Mapping[str, pycolmap.Camera]) -> Path:
    """Write `name MODEL WIDTH HEIGHT params...` lines (no comments: hloc reads
    database_intrinsics.txt without skipping them)."""
    return write_text(path, "".join(f"{name} {camera_to_fields(cam)}\n" for name, cam in cameras.items()))


# ----------------------------------------------------------------------------------------------
# results / pose files: `name qw qx qy qz tx ty tz` (cam_from_world)


def read_poses(path: Path) -> dict[str, pycolmap.Rigid3d]:
    """{name: cam_from_world} of a results file (the format hloc writes and the benchmark reads)."""
    poses: dict[str, pycolmap.Rigid3d] = {}
    for where, fields in data_lines(path, "lines 'name qw qx qy qz tx ty tz'"):
        if len(fields) != 8:
            raise DatasetError(f"{where}: expected 8 fields 'name qw qx qy qz tx ty tz', got {len(fields)}")
        if fields[0] in poses:
            raise DatasetError(f"{where}: {fields[0]!r} has two poses")
        values = parse_floats(fields[1:], where, "quaternion and translation")
        poses[fields[0]] = rigid_from_qt(values[:4], values[4:], where)
    return poses


def write_poses(path: Path, poses: Mapping[str, pycolmap.Rigid3d]) -> Path:
    """One `name qw qx qy qz tx ty tz` line per pose, in the mapping's order."""
    lines = []
    for name, pose in poses.items():
        if not name or any(c.isspace() for c in name):
            raise DatasetError(f"{path}: cannot write name {name!r} (empty or with whitespace)")
        q, t = qt_from_rigid(pose)
        lines.append(" ".join([name, *map(num, q), *map(num, t)]) + "\n")
    return write_text(path, "".join(lines))  # replaced atomically: never a half-written results file


# ----------------------------------------------------------------------------------------------
# pairs files: `name0 name1`


def read_pairs(path: Path, image_root: Path | None = None) -> list[tuple[str, str]]:
    """Pairs of a pairs file, in file order (duplicates kept). Names must be relative paths that
    stay inside the image root (no absolute paths, no `..`): UnsafeNameError otherwise. With
    `image_root`, every named image must also exist there."""
    pairs = []
    for where, fields in data_lines(path, "lines 'name0 name1'"):
        if len(fields) != 2:
            raise DatasetError(f"{where}: expected two image names 'name0 name1', got {len(fields)} fields")
        pair = (checked_name(fields[0], where), checked_name(fields[1], where))
        if image_root is not None:
            for name in pair:
                if not (Path(image_root) / name).is_file():
                    raise DatasetError(f"{where}: image {name!r} not found in {image_root}")
        pairs.append(pair)
    return pairs


def unique_pairs(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop self-pairs and symmetric duplicates, keeping the first order seen."""
    seen: set[frozenset[str]] = set()
    result = []
    for name0, name1 in pairs:
        key = frozenset((name0, name1))
        if name0 != name1 and key not in seen:
            seen.add(key)
            result.append((name0, name1))
    return result


def write_pairs(path: Path, pairs: Iterable[tuple[str, str]]) -> Path:
    """hloc's pairs format: `name0 name1` lines joined by newlines (no trailing newline).

    Written to a temporary file and renamed, so readers never see a half-written list."""
    return write_text(path, "\n".join(f"{a} {b}" for a, b in pairs))


# ----------------------------------------------------------------------------------------------
# NVM v3 (VisualSFM)
#   NVM_V3
#   <num cameras>
#   <name> <focal> <qw> <qx> <qy> <qz> <Cx> <Cy> <Cz> <radial distortion> 0
#   <num points>
#   <x> <y> <z> <r> <g> <b> <num measurements> (<image index> <feature index> <mx> <my>)*
# R (from the quaternion) maps world to camera; C is the camera centre, so t = -R C.
# Measurements are relative to the image centre: colmap_xy = (mx, my) + (W / 2, H / 2).


@dataclass(frozen=True)
class NvmCamera:
    name: str
    focal: float
    qvec_wxyz: tuple[float, float, float, float]
    center: tuple[float, float, float]
    radial: float = 0.0  # VisualSFM's radial distortion (its own convention), kept as read

    @property
    def cam_from_world(self) -> pycolmap.Rigid3d:
        rotation = rigid_from_qt(self.qvec_wxyz, np.zeros(3), self.name).rotation
        return pycolmap.Rigid3d(rotation, -(rotation.matrix() @ np.asarray(self.center)))

    @classmethod
    def from_pose(cls, name: str, focal: float, cam_from_world: pycolmap.Rigid3d, radial: float = 0.0) -> NvmCamera:
        q, _ = qt_from_rigid(cam_from_world)
        center = cam_from_world.inverse().translation
        return cls(name, float(focal), tuple(map(float, q)), tuple(map(float, center)), float(radial))


@dataclass(frozen=True, eq=False)
class NvmPoints:
    """Points and their measurements as flat arrays (M measurements over N points)."""

    xyz: np.ndarray            # (N, 3) float64
    rgb: np.ndarray            # (N, 3) uint8
    point_index: np.ndarray    # (M,) int64, index into xyz
    image_index: np.ndarray    # (M,) int64, index into NvmModel.cameras
    feature_index: np.ndarray  # (M,) int64
    xy: np.ndarray             # (M, 2) float64, relative to the image centre

    @classmethod
    def empty(cls) -> NvmPoints:
        i = np.zeros(0, np.int64)
        return cls(np.zeros((0, 3)), np.zeros((0, 3), np.uint8), i, i, i, np.zeros((0, 2)))

    def __len__(self) -> int:
        return len(self.xyz)


@dataclass(frozen=True, eq=False)
class NvmModel:
    cameras: tuple[NvmCamera, ...]
    points: NvmPoints


def nvm_to_colmap_xy(xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """NVM measurements (relative to the image centre) -> COLMAP pixel coordinates."""
    return np.asarray(xy, dtype=np.float64) + np.array([width / 2, height / 2])


def colmap_to_nvm_xy(xy: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(xy, dtype=np.float64) - np.array([width / 2, height / 2])


def nvm_camera_from_fields(fields: list[str], where: str) -> NvmCamera:
    if len(fields) != 11:
        raise DatasetError(f"{where}: expected 11 fields 'name focal qw qx qy qz Cx Cy Cz radial 0', "
                           f"got {len(fields)}")
    values = parse_floats(fields[1:], where, "camera values")
    if np.linalg.norm(values[1:5]) < 1e-12:
        raise DatasetError(f"{where}: quaternion has zero length")
    return NvmCamera(fields[0], float(values[0]), tuple(map(float, values[1:5])), tuple(map(float, values[5:8])),
                     float(values[8]))


def read_nvm_count(lines: Iterator[tuple[str, list[str]]], path: Path, what: str) -> tuple[str, int]:
    try:
        where, fields = next(lines)
    except StopIteration:
        raise DatasetError(f"{path}: file ends before the {what}") from None
    if len(fields) != 1:
        raise DatasetError(f"{where}: expected the {what} (one integer), got {' '.join(fields)!r}")
    return where, parse_int(fields[0], where, what)


def parse_nvm_points(lines: Iterator[tuple[str, list[str]]], path: Path, count: int, num_cameras: int
                     ) -> NvmPoints:
    xyz, rgb = np.zeros((count, 3)), np.zeros((count, 3), np.uint8)
    point_index, image_index, feature_index, xy = [], [], [], []
    for i in range(count):
        where, fields = next(lines, (None, None))
        if where is None:
            raise DatasetError(f"{path}: file ends after {i} of {count} points")
        n = parse_int(fields[6], where, "number of measurements") if len(fields) >= 7 else -1
        if n < 0 or len(fields) != 7 + 4 * n:
            raise DatasetError(f"{where}: expected 'x y z r g b n' then n x 'image feature mx my', "
                               f"got {len(fields)} fields")
        xyz[i] = parse_floats(fields[:3], where, "point coordinates")
        colour = parse_floats(fields[3:6], where, "colour")
        if (colour < 0).any() or (colour > 255).any():
            raise DatasetError(f"{where}: colour must be in 0..255, got {fields[3:6]}")
        rgb[i] = colour
        measurements = parse_floats(fields[7:], where, "measurements").reshape(n, 4)
        images = measurements[:, 0].astype(np.int64)
        if (measurements[:, :2] != np.round(measurements[:, :2])).any() or (images < 0).any() \
                or (images >= num_cameras).any():
            raise DatasetError(f"{where}: image indices must be integers in 0..{num_cameras - 1} "
                               f"and feature indices integers")
        point_index.append(np.full(n, i, np.int64))
        image_index.append(images)
        feature_index.append(measurements[:, 1].astype(np.int64))
        xy.append(measurements[:, 2:])
    cat = (lambda arrays, shape: np.concatenate(arrays) if arrays else np.zeros(shape))
    return NvmPoints(xyz, rgb, cat(point_index, 0).astype(np.int64), cat(image_index, 0).astype(np.int64),
                     cat(feature_index, 0).astype(np.int64), cat(xy, (0, 2)))


def read_nvm(path: Path, skip_points: bool = False) -> NvmModel:
    """The first model of an NVM v3 file (Aachen's `aachen_cvpr2018_db.nvm` has one).

    Anything after the first model's points (further models, PLY notes) is ignored.
    `skip_points` stops after the cameras (the Aachen file has 1.65 M points).
    """
    path = require_file(path, "an NVM v3 model (VisualSFM)")
    lines = data_lines(path, "NVM v3", comments=False)
    where, header = next(lines, (f"{path}:1", ["<empty file>"]))
    if not header[0].startswith("NVM_V3"):
        raise DatasetError(f"{where}: expected the NVM header 'NVM_V3', got {' '.join(header)!r}")
    if len(header) > 1:
        logger.info("%s: ignoring the header options %s", where, " ".join(header[1:]))
    _, num_cameras = read_nvm_count(lines, path, "number of cameras")
    cameras = []
    for i in range(num_cameras):
        where, fields = next(lines, (None, None))
        if where is None:
            raise DatasetError(f"{path}: file ends after {i} of {num_cameras} cameras")
        cameras.append(nvm_camera_from_fields(fields, where))
    if skip_points:
        return NvmModel(tuple(cameras), NvmPoints.empty())
    _, num_points = read_nvm_count(lines, path, "number of points")
    return NvmModel(tuple(cameras), parse_nvm_points(lines, path, num_points, num_cameras))


def write_nvm(path: Path, model: NvmModel) -> Path:
    """Write an NVM v3 file that VisualSFM and hloc's colmap_from_nvm read (single spaces)."""
    out = ["NVM_V3\n", "\n", f"{len(model.cameras)}\n"]
    for cam in model.cameras:
        if not cam.name or any(c.isspace() for c in cam.name):
            raise DatasetError(f"{path}: cannot write camera name {cam.name!r} (empty or with whitespace)")
        values = [cam.focal, *cam.qvec_wxyz, *cam.center, cam.radial]
        out.append(" ".join([cam.name, *map(num, values), "0"]) + "\n")
    points = model.points
    out += ["\n", f"{len(points)}\n"]
    order = np.argsort(points.point_index, kind="stable")
    starts = np.searchsorted(points.point_index[order], np.arange(len(points) + 1))
    for i in range(len(points)):
        obs = order[starts[i]:starts[i + 1]]
        fields = [*map(num, points.xyz[i]), *(str(int(c)) for c in points.rgb[i]), str(len(obs))]
        for j in obs:
            fields += [str(int(points.image_index[j])), str(int(points.feature_index[j])),
                       num(points.xy[j, 0]), num(points.xy[j, 1])]
        out.append(" ".join(fields) + "\n")
    out += ["\n", "0\n"]  # VisualSFM: no further models
    return write_text(path, "".join(out))
