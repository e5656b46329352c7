"""InLoc: layout, validation, cutout scans (`XYZcut`), scan alignments and the query camera rule.

Layout under the dataset root (as hloc's pipeline_InLoc notebook and localize_inloc read it):

    query/iphone7/IMG_*.JPG
    database/cutouts/<floor>/<scan>/<BLDG>_cutout_<scan>_<yaw>_<pitch>.jpg
    database/cutouts/<floor>/<scan>/<BLDG>_cutout_<scan>_<yaw>_<pitch>.jpg.mat   XYZcut (H, W, 3)
    database/alignments/<floor>/transformations/<BLDG>_trans_<scan>.txt

`floor` is DUC1 or DUC2 (the two evaluation splits), BLDG the building code (DUC). `XYZcut`
holds, for every cutout pixel centre, the scanned 3D point in the scan's own frame (NaN where the
scanner saw nothing); the alignment file's "After general icp" matrix P maps scan to world
coordinates (X_world = R X_scan + t). Pixel (row i, column j) of XYZcut is the point seen at
COLMAP pixel (j + 0.5, i + 0.5), i.e. at hloc/D2 keypoint (j, i).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import scipy.io

from ..atomic import atomic_path, write_text
from ..colmap import pycolmap
from . import DatasetError
from ..textfiles import read_text
from .formats import checked_name, data_lines, require_file

logger = logging.getLogger(__name__)

QUERY_DIR = "query/iphone7"
CUTOUT_DIR = "database/cutouts"
ALIGNMENT_DIR = "database/alignments"
INLOC_FLOORS = ("DUC1", "DUC2")
# iPhone 7 photos: 28 mm-equivalent lens on the 36 mm film width, over the long image side.
IPHONE7_FOCAL_35MM = 28.0
FILM_WIDTH_MM = 36.0
FULL_QUERY_LONG_SIDE = 4032
INLOC_QUERY_FOCAL = FULL_QUERY_LONG_SIDE * IPHONE7_FOCAL_35MM / FILM_WIDTH_MM  # 3136 px, as hloc

CUTOUT_PATTERN = re.compile(r"database/cutouts/(?P<floor>[^/]+)/(?P<scan>[^/]+)/"
                            r"(?P<building>[^/_]+)_cutout_(?P<scan2>[^/_]+)_(?P<yaw>-?\d+)_(?P<pitch>-?\d+)\.jpg")
TRANSFORM_LABELS = {0: "Before general icp:", 6: "After general icp:"}


def inloc_query_focal(width: int, height: int) -> float:
    """Focal length in pixels of an InLoc query image of this size.

    hloc's localize_inloc always uses 4032 * 28 / 36 = 3136 px, which is right for the full-size
    4032 x 3024 iPhone 7 photos. We apply the same 28/36 rule to the long side, so a copy resized
    by a factor s gets s * 3136 px (identical to hloc at full size).
    """
    return max(width, height) * IPHONE7_FOCAL_35MM / FILM_WIDTH_MM


def inloc_query_camera(width: int, height: int) -> pycolmap.Camera:
    """SIMPLE_PINHOLE camera of a query: focal by `inloc_query_focal`, principal point at the
    image centre (W/2, H/2) in COLMAP's convention."""
    return pycolmap.Camera(model="SIMPLE_PINHOLE", width=width, height=height,
                           params=[inloc_query_focal(width, height), width / 2, height / 2])


@lru_cache(maxsize=4096)
def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, reading only its header when Pillow is available."""
    try:
        from PIL import Image
        with Image.open(path) as image:
            return image.size
    except ImportError:
        pass
    except OSError as error:
        raise DatasetError(f"{path}: cannot read the image ({error})") from None
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DatasetError(f"{path}: cannot read the image")
    return image.shape[1], image.shape[0]


@dataclass(frozen=True)
class Cutout:
    """A database cutout, parsed from its name (relative to the dataset root)."""

    name: str
    floor: str
    scan_id: str
    building: str
    yaw: int
    pitch: int

    @property
    def xyz_name(self) -> str:
        return self.name + ".mat"

    @property
    def transformation_name(self) -> str:
        return f"{ALIGNMENT_DIR}/{self.floor}/transformations/{self.building}_trans_{self.scan_id}.txt"


def parse_cutout_name(name: str, where: str = "cutout name") -> Cutout:
    """Cutout of `database/cutouts/<floor>/<scan>/<BLDG>_cutout_<scan>_<yaw>_<pitch>.jpg`."""
    match = CUTOUT_PATTERN.fullmatch(name)
    if match is None or match["scan"] != match["scan2"]:
        raise DatasetError(f"{where}: {name!r} is not 'database/cutouts/<floor>/<scan>/"
                           f"<BLDG>_cutout_<scan>_<yaw>_<pitch>.jpg'")
    return Cutout(name, match["floor"], match["scan"], match["building"], int(match["yaw"]), int(match["pitch"]))


def cutout_name(floor: str, scan_id: str, building: str, yaw: int, pitch: int) -> str:
    return f"{CUTOUT_DIR}/{floor}/{scan_id}/{building}_cutout_{scan_id}_{yaw}_{pitch}.jpg"


def read_xyzcut(path: Path) -> np.ndarray:
    """XYZcut (H, W, 3) float64 of a cutout `.jpg.mat` file (scan frame, NaN = no point).

    Anything else (a missing variable, another shape, text, complex or object data, an empty
    scan) is a DatasetError naming the file: never a traceback or silently wrong 3D points."""
    path = require_file(path, "a cutout .mat file with the variable XYZcut")
    try:
        content = scipy.io.loadmat(str(path), variable_names=["XYZcut"])
    except Exception as error:  # scipy raises MatReadError, ValueError, IndexError... on bad files
        raise DatasetError(f"{path}: not a readable MATLAB file ({type(error).__name__}: "
                           f"{str(error).splitlines()[0] if str(error) else 'unreadable'})") from None
    xyz = content.get("XYZcut")
    if not isinstance(xyz, np.ndarray) or xyz.ndim != 3 or xyz.shape[2] != 3 or 0 in xyz.shape:
        raise DatasetError(f"{path}: expected a variable XYZcut of shape (H, W, 3), got "
                           f"{'none' if xyz is None else getattr(xyz, 'shape', type(xyz).__name__)}")
    if xyz.dtype.kind not in "fiub":
        raise DatasetError(f"{path}: XYZcut must hold real numbers, got dtype {xyz.dtype}")
    return xyz.astype(np.float64, copy=False)


def check_xyzcut_size(xyz: np.ndarray, image_size: tuple[int, int], path: Path) -> None:
    """An XYZcut must cover its cutout: the same size, or a uniformly scaled copy (same aspect
    ratio up to rounding). A transposed or foreign scan would give wrong 3D points silently."""
    width, height = image_size
    scan_height, scan_width = xyz.shape[:2]
    if (scan_width, scan_height) == (width, height):
        return
    if abs(scan_width * height - scan_height * width) > max(width, height):
        raise DatasetError(f"{path}: XYZcut is {scan_width} x {scan_height} (W x H) but its cutout image is "
                           f"{width} x {height}: not the same view")


def write_xyzcut(path: Path, xyz: np.ndarray) -> Path:
    """Write XYZcut as float64 (hloc samples it with torch next to float64 keypoints), compressed.

    Callers may round values to float32 precision first: the zeroed low mantissa bits compress."""
    xyz = np.asarray(xyz)
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise ValueError(f"XYZcut must be (H, W, 3), got {xyz.shape}")
    with atomic_path(path) as partial, open(partial, "wb") as handle:  # a handle: savemat adds no suffix
        scipy.io.savemat(handle, {"XYZcut": xyz.astype(np.float64)}, do_compression=True)
    return Path(path)


def format_matrix(matrix: np.ndarray) -> str:
    """Rows of a 4x4 matrix as Eigen prints them: right-aligned columns, single-space separated."""
    cells = [[repr(float(v)) for v in row] for row in matrix]
    width = max(len(c) for row in cells for c in row)
    return "".join(" ".join(c.rjust(width) for c in row) + "\n" for row in cells)


def write_transformation(path: Path, after_gicp: np.ndarray, before_gicp: np.ndarray | None = None) -> Path:
    """Write an alignment file as the InLoc/WUSTL tools do:

        line 0      Before general icp:
        lines 1-4   4x4 matrix
        line 5      (empty)
        line 6      After general icp:
        lines 7-10  4x4 matrix P_after_GICP (the one hloc reads)
        line 11     (empty)
    """
    before_gicp = after_gicp if before_gicp is None else before_gicp
    text = (f"{TRANSFORM_LABELS[0]}\n{format_matrix(before_gicp)}\n"
            f"{TRANSFORM_LABELS[6]}\n{format_matrix(after_gicp)}\n")
    return write_text(Path(path), text)


def read_transformations(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(P_before_GICP, P_after_GICP), each 4x4 world_from_scan, from lines 1-4 and 7-10
    (0-based; hloc's localize_inloc reads lines 7-10)."""
    path = require_file(path, "an InLoc alignment file ('Before general icp:' / 'After general icp:')")
    lines = read_text(path, "an InLoc alignment file").splitlines()
    if len(lines) < 11:
        raise DatasetError(f"{path}: expected at least 11 lines (two labelled 4x4 matrices), got {len(lines)}")
    for index, label in TRANSFORM_LABELS.items():
        if lines[index].strip() != label:
            raise DatasetError(f"{path}:{index + 1}: expected {label!r}, got {lines[index]!r}")
    return read_matrix(lines, 1, path), read_matrix(lines, 7, path)


def read_matrix(lines: list[str], start: int, path: Path) -> np.ndarray:
    rows = []
    for index in range(start, start + 4):
        try:
            row = [float(v) for v in lines[index].split()]
        except ValueError:
            row = []
        if len(row) != 4 or not np.isfinite(row).all():
            raise DatasetError(f"{path}:{index + 1}: expected 4 numbers of a matrix row, got {lines[index]!r}")
        rows.append(row)
    matrix = np.array(rows)
    if not np.allclose(matrix[3], [0, 0, 0, 1], atol=1e-6):
        raise DatasetError(f"{path}:{start + 4}: last matrix row must be '0 0 0 1', got {lines[start + 3]!r}")
    return matrix


def read_transformation(path: Path) -> np.ndarray:
    """P_after_GICP (4x4, world_from_scan) of an alignment file."""
    return read_transformations(path)[1]


def read_query_floors(path: Path) -> dict[str, str]:
    """{query basename: floor} of a `name floor` list (the synthetic ground_truth/query_floors.txt;
    the real InLoc does not publish which floor a query was taken on)."""
    floors: dict[str, str] = {}
    for where, fields in data_lines(path, "lines 'query_name floor'"):
        if len(fields) != 2:
            raise DatasetError(f"{where}: expected 'query_name floor', got {len(fields)} fields")
        if fields[0] in floors:
            raise DatasetError(f"{where}: {fields[0]!r} is listed twice")
        floors[fields[0]] = fields[1]
    return floors


def write_query_floors(path: Path, floors: dict[str, str]) -> Path:
    return write_text(Path(path), "".join(f"{name} {floor}\n" for name, floor in floors.items()))


@dataclass(frozen=True, eq=False)
class InLocDataset:
    """A located and validated InLoc dataset: queries, cutouts and their scan alignments."""

    root: Path
    query_names: tuple[str, ...]
    cutouts: tuple[Cutout, ...]

    @classmethod
    def from_root(cls, root: Path, check_files: bool = True) -> InLocDataset:
        """Find queries and cutouts; with `check_files`, every cutout needs its `.jpg.mat` and
        every scan its alignment file. DatasetError names the first missing/malformed file."""
        root = Path(root)
        query_dir, cutout_dir = root / QUERY_DIR, root / CUTOUT_DIR
        for folder, what in ((query_dir, "the InLoc query images IMG_*.JPG"),
                             (cutout_dir, "the InLoc cutouts <floor>/<scan>/*.jpg")):
            if not folder.is_dir():
                raise DatasetError(f"{folder}: folder not found (expected {what})")
        queries = tuple(sorted(p.relative_to(root).as_posix() for p in query_dir.iterdir()
                               if p.suffix.lower() == ".jpg"))
        cutouts = tuple(parse_cutout_name(p.relative_to(root).as_posix(), str(p))
                        for p in sorted(cutout_dir.glob("*/*/*.jpg")))
        if not queries or not cutouts:
            raise DatasetError(f"{query_dir if not queries else cutout_dir}: no images found")
        if check_files:
            check_cutout_files(root, cutouts)
        logger.info("InLoc at %s: %d queries, %d cutouts over %s", root, len(queries), len(cutouts),
                    ", ".join(sorted({c.floor for c in cutouts})))
        return cls(root, queries, cutouts)

    @property
    def db_names(self) -> list[str]:
        return [c.name for c in self.cutouts]

    @property
    def floors(self) -> tuple[str, ...]:
        return tuple(sorted({c.floor for c in self.cutouts}))

    def cutout(self, name: str) -> Cutout:
        return parse_cutout_name(checked_name(name, str(self.root)))

    def query_camera(self, name: str) -> pycolmap.Camera:
        """Camera of a query (name relative to the root) by the 28/36 focal rule."""
        return inloc_query_camera(*image_size(self.root / checked_name(name, str(self.root))))

    def scan_pose(self, name: str) -> np.ndarray:
        """world_from_scan (4x4, P_after_GICP) of the scan a cutout belongs to."""
        return read_transformation(self.root / self.cutout(name).transformation_name)

    def cutout_xyz(self, name: str, world: bool = False) -> np.ndarray:
        """XYZcut of a cutout (scan frame), or transformed to world coordinates."""
        cutout = self.cutout(name)
        xyz = read_xyzcut(self.root / cutout.xyz_name)
        check_xyzcut_size(xyz, image_size(self.root / cutout.name), self.root / cutout.xyz_name)
        if not world:
            return xyz
        pose = self.scan_pose(name)
        return xyz @ pose[:3, :3].T + pose[:3, 3]


def check_cutout_files(root: Path, cutouts: tuple[Cutout, ...]) -> None:
    for cutout in cutouts:
        require_file(root / cutout.xyz_name, f"the XYZcut .mat file of {cutout.name}")
    for transformation in sorted({c.transformation_name for c in cutouts}):  # a few hundred small files:
        read_transformations(root / transformation)  # parsed now, not after minutes of extraction
