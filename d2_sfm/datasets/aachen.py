"""Aachen Day-Night v1.0 and v1.1: layout, validation and the reference model with known poses.

Layout under the dataset root (as hloc's pipelines/Aachen and Aachen_v1_1 read it):

    images_upright/db/*.jpg
    images_upright/query/{day/{milestone,nexus4,nexus5x}, night/nexus5x, ...}/*.jpg
    queries/day_time_queries_with_intrinsics.txt      name MODEL W H params...
    queries/night_time_queries_with_intrinsics.txt
    v1.0: 3D-models/aachen_cvpr2018_db.nvm            database poses (NVM v3)
          3D-models/database_intrinsics.txt           name MODEL W H params... per NVM camera
          aachen.db                                   COLMAP database (optional here: only its
                                                      images table name/image_id/camera_id is used)
    v1.1: 3D-models/aachen_v_1_1/                     COLMAP model (cameras, images, points3D)

Image names are relative to `images_upright`, e.g. `db/1000.jpg` or
`query/night/nexus5x/IMG_20161227_172439.jpg`. The day/night condition of a query is the list
file it comes from.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..colmap import pycolmap
from ..colmap_model import read_model
from ..colmap_readonly import DatabaseReadError, read_image_ids
from ..pair_selection import Observations, covisibility_pairs
from . import DatasetError
from .formats import checked_name, read_intrinsics_list, read_nvm, require_file

logger = logging.getLogger(__name__)

AACHEN_VERSIONS = ("v1_0", "v1_1")
CONDITIONS = ("day", "night")
IMAGE_DIR = "images_upright"
NVM_FILE = "3D-models/aachen_cvpr2018_db.nvm"
DB_INTRINSICS_FILE = "3D-models/database_intrinsics.txt"
DATABASE_FILE = "aachen.db"
MODEL_V1_1_DIR = "3D-models/aachen_v_1_1"
QUERY_LIST_FILES = {c: f"queries/{c}_time_queries_with_intrinsics.txt" for c in CONDITIONS}


@dataclass(frozen=True, eq=False)
class QueryCamera:
    """A query image: name relative to the image folder, intrinsics, and "day" or "night"."""

    name: str
    camera: pycolmap.Camera
    condition: str = "day"

    @property
    def basename(self) -> str:
        """The name used in results files (hloc writes basenames)."""
        return self.name.rsplit("/", 1)[-1]


@dataclass(frozen=True, eq=False)
class DatabaseImage:
    """A reference image with known pose (cam_from_world) and intrinsics."""

    name: str
    camera: pycolmap.Camera
    cam_from_world: pycolmap.Rigid3d
    image_id: int
    camera_id: int


def read_database_ids(path: Path) -> dict[str, tuple[int, int]]:
    """{name: (image_id, camera_id)} from the images table of a COLMAP database (read-only)."""
    path = require_file(path, "a COLMAP database (SQLite) with an images table")
    try:
        return read_image_ids(path)
    except DatabaseReadError as error:
        raise DatasetError(f"{error}; expected a COLMAP database with an images table") from None


def read_query_lists(root: Path) -> tuple[QueryCamera, ...]:
    """Day then night queries from `queries/{day,night}_time_queries_with_intrinsics.txt`."""
    queries, seen = [], {}
    for condition, relative in QUERY_LIST_FILES.items():
        path = root / relative
        for name, camera in read_intrinsics_list(require_file(path, f"the Aachen {condition} query list")).items():
            if name in seen:
                raise DatasetError(f"{path}: query {name!r} is also listed in {seen[name]}")
            if not name.startswith(f"query/{condition}/"):
                logger.warning("%s: %s query %r is not under query/%s/", path, condition, name, condition)
            seen[name] = path
            queries.append(QueryCamera(name, camera, condition))
    return tuple(queries)


def database_images_v1_0(root: Path) -> tuple[DatabaseImage, ...]:
    """Reference images from the NVM poses and database_intrinsics.txt; ids from aachen.db if
    present (as hloc's colmap_from_nvm), else 1, 2, ... in NVM order."""
    nvm_path = require_file(root / NVM_FILE, "the Aachen v1.0 database model (NVM v3)")
    intrinsics_path = root / DB_INTRINSICS_FILE
    cameras = read_intrinsics_list(require_file(intrinsics_path, "'name MODEL W H params' per database image"))
    nvm_cameras = read_nvm(nvm_path, skip_points=True).cameras
    database = root / DATABASE_FILE
    ids = read_database_ids(database) if database.exists() else {
        cam.name: (i, i) for i, cam in enumerate(nvm_cameras, start=1)}
    if len(cameras) != len(nvm_cameras):
        raise DatasetError(f"{intrinsics_path}: {len(cameras)} cameras but {nvm_path} has {len(nvm_cameras)}")
    images = []
    for cam in nvm_cameras:
        name = checked_name(cam.name, str(nvm_path))
        if name not in cameras:
            raise DatasetError(f"{intrinsics_path}: no intrinsics for {name!r} (listed in {nvm_path})")
        if name not in ids:
            raise DatasetError(f"{database}: no image named {name!r} (listed in {nvm_path})")
        images.append(DatabaseImage(name, cameras[name], cam.cam_from_world, *ids[name]))
    return tuple(images)


def database_images_v1_1(root: Path) -> tuple[DatabaseImage, ...]:
    """Reference images (poses, intrinsics, ids) of the COLMAP model 3D-models/aachen_v_1_1."""
    model_dir = root / MODEL_V1_1_DIR
    if not any((model_dir / f"images{ext}").is_file() for ext in (".bin", ".txt")):
        raise DatasetError(f"{model_dir}: expected a COLMAP model (cameras, images, points3D .bin or .txt)")
    model = read_model(model_dir, DatasetError)  # validated first: a truncated file is one named error
    images = []
    for image_id in sorted(model.images):
        image = model.images[image_id]
        if not image.has_pose:
            raise DatasetError(f"{model_dir}: image {image.name!r} has no pose")
        name = checked_name(image.name, str(model_dir))
        images.append(DatabaseImage(name, model.cameras[image.camera_id], image.cam_from_world(),
                                    image_id, image.camera_id))
    return tuple(images)


def check_images_exist(image_dir: Path, names: list[str]) -> None:
    missing = [name for name in names if not (image_dir / name).is_file()]
    if missing:
        raise DatasetError(f"{image_dir}: {len(missing)} of {len(names)} listed images are missing, "
                           f"e.g. {missing[0]!r}")


@dataclass(frozen=True, eq=False)
class AachenDataset:
    """A located and validated Aachen Day-Night dataset (v1.0 or v1.1)."""

    root: Path
    version: str
    database: tuple[DatabaseImage, ...]
    queries: tuple[QueryCamera, ...]

    @classmethod
    def from_root(cls, root: Path, version: str = "v1_0", check_images: bool = True) -> AachenDataset:
        """Locate and validate every file; DatasetError naming the first missing/malformed one.
        With `check_images`, every database and query image must exist under images_upright/."""
        root = Path(root)
        if version not in AACHEN_VERSIONS:
            raise DatasetError(f"unknown Aachen version {version!r}: expected one of {AACHEN_VERSIONS}")
        if not (root / IMAGE_DIR).is_dir():
            raise DatasetError(f"{root / IMAGE_DIR}: folder not found (expected the Aachen images "
                               f"db/ and query/ of the dataset at {root})")
        database = database_images_v1_0(root) if version == "v1_0" else database_images_v1_1(root)
        queries = read_query_lists(root)
        if check_images:
            check_images_exist(root / IMAGE_DIR, [im.name for im in database] + [q.name for q in queries])
        logger.info("Aachen %s at %s: %d database images, %d day and %d night queries", version, root,
                    len(database), *(sum(q.condition == c for q in queries) for c in CONDITIONS))
        return cls(root, version, database, queries)

    @property
    def image_dir(self) -> Path:
        return self.root / IMAGE_DIR

    @property
    def db_names(self) -> list[str]:
        return [image.name for image in self.database]

    def query_names(self, condition: str | None = None) -> list[str]:
        """Query names (relative to image_dir), all or only "day" / "night"."""
        if condition not in (None, *CONDITIONS):
            raise ValueError(f"condition must be None, 'day' or 'night', got {condition!r}")
        return [q.name for q in self.queries if condition in (None, q.condition)]

    def query(self, name: str) -> QueryCamera:
        for query in self.queries:
            if name in (query.name, query.basename):
                return query
        raise KeyError(f"{name!r} is not an Aachen query of {self.root}")

    def observations(self) -> Observations:
        """Which database image sees which point of the dataset's own (SIFT) model: the NVM points
        (v1.0) or the model's tracks (v1.1)."""
        if self.version == "v1_0":
            points = read_nvm(self.root / NVM_FILE).points
            return Observations(self.db_names, points.image_index, points.point_index)
        return model_observations(self.root / MODEL_V1_1_DIR, self.db_names)

    def covisibility_pairs(self, num_matched: int = 20) -> list[tuple[str, str]]:
        """For each database image, the `num_matched` images sharing most SIFT points with it
        (in decreasing order, only those sharing at least one): the pairs hloc's
        pairs_from_covisibility makes for triangulation."""
        return covisibility_pairs(self.observations(), num_matched)

    def reference_reconstruction(self) -> pycolmap.Reconstruction:
        """pycolmap.Reconstruction of the database images with their known poses and intrinsics
        (ids kept), one camera per image as listed, and no 2D or 3D points."""
        return reconstruction_from_images(self.database)


def reconstruction_from_images(images: tuple[DatabaseImage, ...]) -> pycolmap.Reconstruction:
    """Posed images without points; cameras shared by several images are added once."""
    reconstruction = pycolmap.Reconstruction()
    for image in images:
        if not reconstruction.exists_camera(image.camera_id):
            camera = pycolmap.Camera(model=image.camera.model, width=image.camera.width,
                                     height=image.camera.height, params=image.camera.params,
                                     camera_id=image.camera_id)
            reconstruction.add_camera_with_trivial_rig(camera)
        elif reconstruction.cameras[image.camera_id].params.tolist() != list(image.camera.params):
            raise DatasetError(f"camera {image.camera_id} of {image.name!r} differs from an earlier "
                               f"image with the same camera id")
        new = pycolmap.Image(name=image.name, camera_id=image.camera_id, image_id=image.image_id)
        reconstruction.add_image_with_trivial_frame(new, image.cam_from_world)
    return reconstruction


def model_observations(model_dir: Path, names: list[str]) -> Observations:
    """Every track element of a COLMAP model, as (image index into `names`, point index)."""
    model = read_model(model_dir, DatasetError)
    position = {name: i for i, name in enumerate(names)}
    index_of = {image_id: position[image.name] for image_id, image in model.images.items()}
    point_index, image_index = [], []
    for k, point in enumerate(model.points3D.values()):
        for element in point.track.elements:
            point_index.append(k)
            image_index.append(index_of[element.image_id])
    return Observations(names, np.array(image_index, np.int64), np.array(point_index, np.int64))
