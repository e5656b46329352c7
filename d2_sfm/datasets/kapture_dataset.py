"""kapture localization datasets (kapture-localization's layout), read by a small strict reader.

    python -m d2_sfm.localize --dataset kapture --root DIR
    python -m d2_sfm.datasets.kapture_dataset --output DIR [--from SYNTHETIC_AACHEN] [--num-db N] ...

Layout under DIR (as kapture-localization's pipelines read it):

    mapping/sensors/sensors.txt          sensor_id, name, sensor_type, [sensor_params]+
    mapping/sensors/trajectories.txt     timestamp, device_id, qw, qx, qy, qz, tx, ty, tz (required)
    mapping/sensors/records_camera.txt   timestamp, device_id, image_path
    mapping/sensors/records_data/<image_path>
    query/sensors/...                    the same; trajectories.txt optional (ground truth)

Conventions (kapture format 1.1): comma-separated fields, blank lines and `#` lines ignored. A
camera's sensor_params are `MODEL, width, height, params...` with COLMAP's models and parameter
order (SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV, OPENCV_FISHEYE, FULL_OPENCV, FOV,
SIMPLE_RADIAL_FISHEYE, RADIAL_FISHEYE, THIN_PRISM_FISHEYE; UNKNOWN_CAMERA has only the size).
Trajectory poses transform world to device (= COLMAP's cam_from_world), quaternion w, x, y, z.

Why our own reader: kapture's `kapture_from_dir` also loads feature config files, whose dtype field
it passes to eval(); nothing read from a user's dataset may run code. This reader reads only the
three text files above (strict UTF-8, one error line naming file and line) and never writes into
the dataset. Only single cameras are supported: a dataset with rigs (non-empty sensors/rigs.txt)
is refused in one line. Other sensor kinds (wifi, gnss, lidar, depth) are ignored.

Image names (features, pairs, --pairs files) are relative to DIR, e.g.
`mapping/sensors/records_data/db/1000.jpg`; results files use basenames, as for Aachen.
Mapping images without a pose are skipped (one warning with their count); the 3D model is D2
points triangulated in the mapping poses, database pairs chosen from the poses (nearest similarly
oriented cameras).
"""
from __future__ import annotations

import argparse
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..colmap import pycolmap
from ..paths import name_problem
from ..textfiles import read_text_lines
from . import DatasetError
from .aachen import DatabaseImage, QueryCamera, check_images_exist, reconstruction_from_images
from ..colmap_model import camera_num_params
from .formats import camera_model, checked_name, parse_floats, rigid_from_qt

logger = logging.getLogger(__name__)

MAPPING_DIR = "mapping"
QUERY_DIR = "query"
SENSORS_FILE = "sensors/sensors.txt"
TRAJECTORIES_FILE = "sensors/trajectories.txt"
RECORDS_FILE = "sensors/records_camera.txt"
RIGS_FILE = "sensors/rigs.txt"
RECORDS_DIR = "sensors/records_data"
KAPTURE_HEADER = "# kapture format: 1.1"
UNKNOWN_CAMERA = "UNKNOWN_CAMERA"
# kapture's CameraType names (kapture/core/Sensors.py): COLMAP's models, parameters in COLMAP's order
CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "OPENCV_FISHEYE", "FULL_OPENCV",
                 "FOV", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE", "THIN_PRISM_FISHEYE")
CONDITIONS = ("day", "night")  # a query path with such a folder is evaluated in that group


# ----------------------------------------------------------------------------------------------
# The strict reader of one kapture folder


@dataclass(frozen=True)
class CameraRecord:
    """One line of records_camera.txt: an image taken by camera `sensor_id` at `timestamp`."""

    timestamp: int
    sensor_id: str
    path: str  # relative to sensors/records_data, validated
    where: str  # file:line, for messages


@dataclass(frozen=True, eq=False)
class KaptureFolder:
    """What a kapture folder says about its camera images: intrinsics, records and poses."""

    root: Path
    cameras: dict[str, pycolmap.Camera | None]  # sensor id -> intrinsics (None: UNKNOWN_CAMERA)
    records: tuple[CameraRecord, ...]
    poses: dict[tuple[int, str], pycolmap.Rigid3d]  # (timestamp, device id) -> cam_from_world
    trajectories_file: Path | None  # None when the folder has no trajectories.txt

    def pose(self, record: CameraRecord) -> pycolmap.Rigid3d | None:
        return self.poses.get((record.timestamp, record.sensor_id))

    def image_path(self, record: CameraRecord) -> Path:
        return self.root / RECORDS_DIR / record.path

    def files(self) -> list[Path]:
        """The text files read (what a result built from this folder depends on)."""
        files = [self.root / SENSORS_FILE, self.root / RECORDS_FILE]
        return files + ([self.trajectories_file] if self.trajectories_file else [])


def kapture_lines(path: Path, what: str) -> list[tuple[str, list[str]]]:
    """(`file:line`, comma-separated fields, stripped) of the data lines of a kapture text file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (expected {what})")
    return [(f"{path}:{number}", [field.strip() for field in line.split(",")])
            for number, line in read_text_lines(path, what)]


def parse_integer(text: str, where: str, what: str, minimum: int = 0) -> int:
    """An integer field; kapture writes whole floats as integers, so '640.0' is accepted too."""
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"{where}: {what} must be an integer, got {text!r}") from None
    if not value.is_integer() or value < minimum:
        raise DatasetError(f"{where}: {what} must be an integer >= {minimum}, got {text!r}")
    return int(value)


def camera_from_kapture(params: list[str], where: str) -> pycolmap.Camera | None:
    """pycolmap.Camera of a camera's sensor_params `MODEL, width, height, params...`; None for
    UNKNOWN_CAMERA (a size without intrinsics: usable only by images that need none)."""
    model = params[0] if params else ""
    if model == UNKNOWN_CAMERA:
        return None
    if model not in CAMERA_MODELS:
        raise DatasetError(f"{where}: unknown kapture camera model {model!r} (expected one of "
                           f"{', '.join(CAMERA_MODELS)} or {UNKNOWN_CAMERA})")
    colmap_model = camera_model(model, where)
    expected = camera_num_params(colmap_model)
    if len(params) != 3 + expected:
        raise DatasetError(f"{where}: camera model {model} takes width, height and {expected} parameters, "
                           f"got {len(params) - 1} values")
    width = parse_integer(params[1], where, "image width", minimum=1)
    height = parse_integer(params[2], where, "image height", minimum=1)
    values = parse_floats(params[3:], where, f"{model} parameters")
    return pycolmap.Camera(model=colmap_model, width=width, height=height, params=values)


def read_sensors(path: Path) -> dict[str, pycolmap.Camera | None]:
    """{sensor id: camera} of the camera sensors in sensors.txt (other sensor kinds are skipped)."""
    cameras: dict[str, pycolmap.Camera | None] = {}
    seen: set[str] = set()
    for where, fields in kapture_lines(path, "kapture sensors 'sensor_id, name, sensor_type, [params]+'"):
        if len(fields) < 3 or not fields[0]:
            raise DatasetError(f"{where}: expected 'sensor_id, name, sensor_type, [sensor_params]+', "
                               f"got {len(fields)} fields")
        sensor_id, sensor_type = fields[0], fields[2]
        if sensor_id in seen:
            raise DatasetError(f"{where}: sensor {sensor_id!r} is defined twice")
        seen.add(sensor_id)
        if sensor_type == "camera":
            cameras[sensor_id] = camera_from_kapture(fields[3:], where)
    if not cameras:
        raise DatasetError(f"{path}: no camera sensor (a line 'sensor_id, name, camera, MODEL, width, height, "
                           "params...')")
    return cameras


def read_trajectories(path: Path) -> dict[tuple[int, str], pycolmap.Rigid3d]:
    """{(timestamp, device id): cam_from_world} of trajectories.txt (world-to-device poses)."""
    poses: dict[tuple[int, str], pycolmap.Rigid3d] = {}
    for where, fields in kapture_lines(path, "kapture trajectories 'timestamp, device_id, qw, qx, qy, qz, "
                                             "tx, ty, tz'"):
        if len(fields) != 9:
            raise DatasetError(f"{where}: expected 9 fields 'timestamp, device_id, qw, qx, qy, qz, tx, ty, tz', "
                               f"got {len(fields)}")
        key = (parse_integer(fields[0], where, "timestamp"), fields[1])
        if key in poses:
            raise DatasetError(f"{where}: device {key[1]!r} has two poses at timestamp {key[0]}")
        if any(not field for field in fields[2:]):
            raise DatasetError(f"{where}: incomplete pose (an empty rotation or translation field)")
        values = parse_floats(fields[2:], where, "quaternion and translation")
        poses[key] = rigid_from_qt(values[:4], values[4:], where)
    return poses


def read_records_camera(path: Path, cameras: dict[str, pycolmap.Camera | None]) -> tuple[CameraRecord, ...]:
    """The camera records, image paths checked: relative, inside records_data, usable as names."""
    records, keys, paths = [], set(), {}
    for where, fields in kapture_lines(path, "kapture camera records 'timestamp, device_id, image_path'"):
        if len(fields) != 3 or not fields[2]:
            raise DatasetError(f"{where}: expected 3 fields 'timestamp, device_id, image_path', got {len(fields)}")
        timestamp, sensor_id = parse_integer(fields[0], where, "timestamp"), fields[1]
        if sensor_id not in cameras:
            raise DatasetError(f"{where}: sensor {sensor_id!r} is not a camera of {path.parent / 'sensors.txt'}")
        image = checked_name(fields[2], where)
        problem = name_problem(image)
        if problem:
            raise DatasetError(f"{where}: image path {image!r} cannot be used: {problem}")
        if (timestamp, sensor_id) in keys:
            raise DatasetError(f"{where}: camera {sensor_id!r} has two records at timestamp {timestamp}")
        if image in paths:
            raise DatasetError(f"{where}: image {image!r} is already recorded at {paths[image]}")
        keys.add((timestamp, sensor_id))
        paths[image] = where
        records.append(CameraRecord(timestamp, sensor_id, image, where))
    if not records:
        raise DatasetError(f"{path}: no camera record")
    return tuple(records)


def check_no_rigs(folder: Path) -> None:
    """Refuse rigs: their poses compose rig and sensor transforms that this reader does not do."""
    rigs = folder / RIGS_FILE
    if rigs.exists() and kapture_lines(rigs, "kapture rigs"):
        raise DatasetError(f"{rigs}: camera rigs are not supported (only single cameras, each with its own "
                           "poses in trajectories.txt)")


def read_kapture_folder(folder: Path, require_trajectories: bool = False) -> KaptureFolder:
    """Sensors, camera records and (when present, or required) trajectories of one kapture folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: kapture folder not found")
    check_no_rigs(folder)
    cameras = read_sensors(folder / SENSORS_FILE)
    records = read_records_camera(folder / RECORDS_FILE, cameras)
    trajectories = folder / TRAJECTORIES_FILE
    poses: dict[tuple[int, str], pycolmap.Rigid3d] = {}
    if require_trajectories or trajectories.exists():
        poses = read_trajectories(trajectories)
    return KaptureFolder(folder, cameras, records, poses, trajectories if trajectories.exists() else None)


# ----------------------------------------------------------------------------------------------
# A localization dataset: mapping/ (posed) and query/


def image_name(folder: str, record: CameraRecord) -> str:
    """The name of a record's image relative to the dataset root."""
    return f"{folder}/{RECORDS_DIR}/{record.path}"


def known_camera(kfolder: KaptureFolder, record: CameraRecord, role: str) -> pycolmap.Camera:
    camera = kfolder.cameras[record.sensor_id]
    if camera is None:
        raise DatasetError(f"{record.where}: {role} image {record.path!r} has camera {record.sensor_id!r} of "
                           f"model {UNKNOWN_CAMERA}: its intrinsics are needed")
    return camera


def database_images(mapping: KaptureFolder) -> tuple[DatabaseImage, ...]:
    """The posed mapping images; ids: images in record order, cameras in sensors.txt order."""
    camera_ids = {sensor_id: i for i, sensor_id in enumerate(mapping.cameras, start=1)}
    images, unposed = [], []
    for record in mapping.records:
        pose = mapping.pose(record)
        if pose is None:
            unposed.append(record.path)
            continue
        camera = known_camera(mapping, record, "mapping")
        images.append(DatabaseImage(image_name(MAPPING_DIR, record), camera, pose, len(images) + 1,
                                    camera_ids[record.sensor_id]))
    if not images:
        raise DatasetError(f"{mapping.trajectories_file}: no pose for any mapping image of "
                           f"{mapping.root / RECORDS_FILE} (same timestamp and device id expected)")
    if unposed:
        logger.warning("%s: %d of %d mapping images have no pose in %s and are skipped, e.g. %s",
                       mapping.root / RECORDS_FILE, len(unposed), len(mapping.records), TRAJECTORIES_FILE,
                       unposed[0])
    return tuple(images)


def query_condition(path: str) -> str | None:
    """"day" / "night" when a folder of the image path says so (Aachen in kapture), else None."""
    parts = {part.lower() for part in PurePosixPath(path).parts[:-1]}
    found = [condition for condition in CONDITIONS if condition in parts]
    return found[0] if len(found) == 1 else None


def query_cameras(query: KaptureFolder) -> tuple[QueryCamera, ...]:
    """The queries with their intrinsics; basenames must be unique (results files use them)."""
    queries, basenames = [], {}
    for record in query.records:
        camera = known_camera(query, record, "query")
        name = image_name(QUERY_DIR, record)
        basename = PurePosixPath(record.path).name
        if basename in basenames:
            raise DatasetError(f"{record.where}: query {record.path!r} has the same file name as {basenames[basename]} "
                               "(results files name queries by their file name)")
        basenames[basename] = record.where
        queries.append(QueryCamera(name, camera, query_condition(record.path) or "all"))
    return tuple(queries)


@dataclass(frozen=True, eq=False)
class KaptureDataset:
    """A located and validated kapture localization dataset (mapping/ and query/ folders)."""

    root: Path
    mapping: KaptureFolder
    query: KaptureFolder
    database: tuple[DatabaseImage, ...]
    queries: tuple[QueryCamera, ...]
    version: str = "kapture"

    @classmethod
    def from_root(cls, root: Path, check_images: bool = True) -> KaptureDataset:
        """Read and check mapping/ and query/; DatasetError naming the first bad file and line.
        With `check_images`, every used image must exist under sensors/records_data/."""
        root = Path(root)
        for folder in (MAPPING_DIR, QUERY_DIR):
            if not (root / folder).is_dir():
                raise DatasetError(f"{root / folder}: folder not found (a kapture localization dataset has "
                                   f"{MAPPING_DIR}/ and {QUERY_DIR}/ kapture folders)")
        mapping = read_kapture_folder(root / MAPPING_DIR, require_trajectories=True)
        query = read_kapture_folder(root / QUERY_DIR)
        database, queries = database_images(mapping), query_cameras(query)
        if check_images:
            check_images_exist(root, [im.name for im in database] + [q.name for q in queries])
        logger.info("kapture dataset at %s: %d posed mapping images, %d queries (%s)", root, len(database),
                    len(queries), "with ground truth" if query.poses else "no ground truth")
        return cls(root, mapping, query, database, queries)

    @property
    def image_dir(self) -> Path:
        return self.root

    @property
    def db_names(self) -> list[str]:
        return [image.name for image in self.database]

    def dataset_files(self) -> list[Path]:
        """The mapping files the reference poses come from."""
        return self.mapping.files()

    def reference_reconstruction(self) -> pycolmap.Reconstruction:
        """The posed mapping images with their cameras, no points."""
        return reconstruction_from_images(self.database)

    def ground_truth(self) -> dict[str, pycolmap.Rigid3d]:
        """{query basename: cam_from_world} of the queries posed in query/sensors/trajectories.txt."""
        truth = {}
        for record in self.query.records:
            pose = self.query.pose(record)
            if pose is not None:
                truth[PurePosixPath(record.path).name] = pose
        return truth


# ----------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m d2_sfm.datasets.kapture_dataset",
                                     description="Write the synthetic Aachen look-alike as a kapture "
                                                 "localization dataset (mapping/ and query/).")
    parser.add_argument("--output", type=Path, required=True, help="kapture dataset folder to create")
    parser.add_argument("--from", dest="source", type=Path,
                        help="an existing synthetic Aachen dataset (python -m d2_sfm.datasets.synthetic); "
                             "default: render a new Aachen v1.1 look-alike")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-db", type=int, default=None, help="database images of a new look-alike")
    parser.add_argument("--num-queries", type=int, default=None, help="queries of a new look-alike")
    parser.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("W", "H"))
    return parser


def cli(argv: list[str] | None = None) -> int:
    from .kapture_writer import write_kapture_from_synthetic  # the writer builds on this reader

    args = build_parser().parse_args(argv)
    if args.source is not None:
        write_kapture_from_synthetic(args.source, args.output)
        return 0
    from . import synthetic

    with tempfile.TemporaryDirectory() as scratch:
        options = {"image_size": tuple(args.image_size)} if args.image_size else {}
        source = synthetic.main("aachen_v1_1", Path(scratch) / "aachen", args.seed, args.num_db,
                                args.num_queries, **options)
        write_kapture_from_synthetic(source, args.output)
    return 0


if __name__ == "__main__":
    from ..cli import run_cli

    raise SystemExit(run_cli(cli))
