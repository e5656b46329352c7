"""Reading COLMAP databases without changing them.

`pycolmap.Database.open` creates what is missing and writes to the file even when only reading
(measured: the bytes and the mtime change), so every read that must leave a database as it was
(a user's dataset such as `aachen.db`, a finished run's `database.db` read by a report) opens it
with SQLite's read-only, immutable mode instead: no lock, journal, `-wal` or `-shm` file, no write.
Writing stays with pycolmap.
"""
from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Iterator

import numpy as np

from .colmap import pycolmap
from .errors import D2SfmError

MAX_IMAGE_ID = 2147483647  # COLMAP's pair_id = smaller id * MAX_IMAGE_ID + larger id


class DatabaseReadError(D2SfmError, ValueError):
    """A file that is not a readable COLMAP database; the message names it."""


def read_only_uri(path: Path) -> str:
    """SQLite URI opening `path` strictly read-only and immutable. The path is percent-quoted
    (as_uri), so spaces, '?' and '#' in folder names are taken literally."""
    return Path(path).absolute().as_uri() + "?mode=ro&immutable=1"


@contextlib.contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection, really closed at the end (`with connection` only ends a transaction)."""
    if not Path(path).is_file():
        raise DatabaseReadError(f"COLMAP database {path} does not exist")
    try:
        with contextlib.closing(sqlite3.connect(read_only_uri(path), uri=True)) as connection:
            yield connection
    except sqlite3.Error as error:
        raise DatabaseReadError(f"{path}: not a readable COLMAP database ({error})") from None


def read_image_ids(path: Path) -> dict[str, tuple[int, int]]:
    """{name: (image_id, camera_id)} from the images table."""
    with connect(path) as connection:
        rows = connection.execute("SELECT name, image_id, camera_id FROM images").fetchall()
    ids: dict[str, tuple[int, int]] = {}
    for name, image_id, camera_id in rows:
        if not isinstance(name, str) or not isinstance(image_id, int) or not isinstance(camera_id, int):
            raise DatabaseReadError(f"{path}: images table row {name!r} has a non-text name or non-integer ids")
        ids[name] = (image_id, camera_id)
    return ids


def read_two_view_inliers(path: Path, image_id0: int, image_id1: int) -> np.ndarray | None:
    """Verified inlier matches (K, 2) of a pair, columns in the order (image_id0, image_id1);
    None when the database has no two-view geometry for the pair."""
    first, second = sorted((image_id0, image_id1))
    with connect(path) as connection:
        row = connection.execute("SELECT rows, cols, data FROM two_view_geometries WHERE pair_id = ?",
                                 (first * MAX_IMAGE_ID + second,)).fetchone()
    if row is None:
        return None
    rows, cols, data = row
    if not rows or data is None:
        return np.zeros((0, 2), np.int64)
    if cols != 2 or len(data) != rows * cols * 4:
        raise DatabaseReadError(f"{path}: two-view geometry of images {first}, {second} is malformed")
    inliers = np.frombuffer(data, np.uint32).reshape(rows, 2).astype(np.int64)
    return inliers if image_id0 <= image_id1 else inliers[:, ::-1].copy()


def read_cameras(path: Path) -> dict[int, pycolmap.Camera]:
    """{camera_id: camera} from the cameras table (model, size and parameters)."""
    with connect(path) as connection:
        rows = connection.execute("SELECT camera_id, model, width, height, params FROM cameras").fetchall()
    cameras = {}
    for camera_id, model, width, height, params in rows:
        try:
            camera = pycolmap.Camera(model=pycolmap.CameraModelId(model), width=width, height=height,
                                     params=np.frombuffer(params, np.float64).tolist())
        except (TypeError, ValueError) as error:
            raise DatabaseReadError(f"{path}: camera {camera_id} is malformed ({error})") from None
        camera.camera_id = camera_id
        cameras[camera_id] = camera
    return cameras
