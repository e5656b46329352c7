"""The embedded default scene of `python -m d2_sfm.reconstruct`: a small multi-view set of a
courtyard with boxes (see scenes.plaza_site), rendered from photograph collages with known poses.

    <root>/images/view_000.jpg ...
    <root>/ground_truth.txt   one line per image: name qw qx qy qz tx ty tz fx fy cx cy
                              (cam_from_world, PINHOLE intrinsics in COLMAP's pixel convention)

The first line of ground_truth.txt records the parameters; `write_sample_scene` does nothing when
the folder already holds a complete scene written with the same parameters.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..atomic import write_text
from ..colmap import pycolmap
from . import DatasetError
from .formats import data_lines, num, parse_floats, qt_from_rigid, rigid_from_matrix, rigid_from_qt
from .render import RENDERER_VERSION, PinholeCamera, look_at, render
from .scenes import plaza_site

logger = logging.getLogger(__name__)

SAMPLE_SCENE_DIR = Path("datasets/sample_scene")
IMAGE_DIR = "images"
GROUND_TRUTH_FILE = "ground_truth.txt"
HFOV_DEG = 60.0
JPEG_QUALITY = 95


@dataclass(frozen=True, eq=False)
class GroundTruthView:
    name: str
    cam_from_world: pycolmap.Rigid3d
    camera: pycolmap.Camera | None  # PINHOLE; None when the file gives no intrinsics


def sample_scene_poses(num_views: int, rng: np.random.Generator) -> list[np.ndarray]:
    """cam_from_world (3, 4) of cameras on a 110-degree arc of radius ~7.5 m facing the boxes."""
    poses = []
    for angle in np.deg2rad(np.linspace(-55.0, 55.0, num_views)):
        radius, height = 7.5 + rng.uniform(-0.5, 0.5), rng.uniform(1.8, 2.6)
        center = np.array([radius * np.sin(angle), 1.0 - radius * np.cos(angle), height])
        target = np.array([0.0, 1.5, 0.8]) + rng.uniform(-0.3, 0.3, 3)
        poses.append(look_at(center, target, roll_deg=rng.uniform(-3, 3)))
    return poses


def header_line(num_views: int, size: tuple[int, int], seed: int) -> str:
    return (f"# d2_sfm sample scene: num_views={num_views} size={size[0]}x{size[1]} seed={seed} "
            f"renderer={RENDERER_VERSION}\n")


def is_complete(root: Path, header: str, num_views: int) -> bool:
    path = root / GROUND_TRUTH_FILE
    if not path.is_file():
        return False
    with open(path, encoding="utf-8") as handle:
        if handle.readline() != header:
            return False
    try:
        views = read_ground_truth(path)
    except DatasetError:
        return False
    return len(views) == num_views and all((root / IMAGE_DIR / name).is_file() for name in views)


def write_sample_scene(root: Path = SAMPLE_SCENE_DIR, num_views: int = 12, size: tuple[int, int] = (640, 480),
                       seed: int = 0) -> Path:
    """Render the sample scene into `root` (images/ and ground_truth.txt); returns `root`.

    Idempotent: a complete scene with the same parameters is left untouched. Otherwise the
    images are (re)written, stale view_*.jpg removed, and ground_truth.txt, written last, marks
    the scene complete.
    """
    root = Path(root)
    header = header_line(num_views, size, seed)
    if is_complete(root, header, num_views):
        logger.info("Sample scene already complete at %s", root)
        return root
    if num_views < 2:
        raise ValueError(f"the sample scene needs at least 2 views, got {num_views}")
    rng = np.random.default_rng(seed)
    site = plaza_site(rng)
    camera = PinholeCamera.from_hfov(size[0], size[1], HFOV_DEG)
    image_dir = root / IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    (root / GROUND_TRUTH_FILE).unlink(missing_ok=True)
    lines = [header, "# name qw qx qy qz tx ty tz fx fy cx cy (cam_from_world, PINHOLE, COLMAP pixels)\n"]
    for i, pose in enumerate(sample_scene_poses(num_views, rng)):
        name = f"view_{i:03d}.jpg"
        image = render(site.scene, camera, pose).image
        if not cv2.imwrite(str(image_dir / name), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
            raise DatasetError(f"{image_dir / name}: could not write the image")
        q, t = qt_from_rigid(rigid_from_matrix(pose))
        values = [*q, *t, camera.fx, camera.fy, camera.cx, camera.cy]
        lines.append(" ".join([name, *map(num, values)]) + "\n")
    written = {f"view_{i:03d}.jpg" for i in range(num_views)}
    for stale in image_dir.glob("view_*.jpg"):  # from an earlier scene with more views
        if stale.name not in written:
            stale.unlink()
    write_text(root / GROUND_TRUTH_FILE, "".join(lines))
    logger.info("Wrote the sample scene (%d views, %dx%d) to %s", num_views, *size, root)
    return root


def read_ground_truth(path: Path) -> dict[str, GroundTruthView]:
    """{name: view} of a ground_truth.txt, in file order. Lines are
    `name qw qx qy qz tx ty tz fx fy cx cy` (the camera is PINHOLE, its size taken as (2 cx, 2 cy))
    or just `name qw qx qy qz tx ty tz` (camera None)."""
    views: dict[str, GroundTruthView] = {}
    for where, fields in data_lines(path, "lines 'name qw qx qy qz tx ty tz [fx fy cx cy]'"):
        if len(fields) not in (8, 12):
            raise DatasetError(f"{where}: expected 12 fields 'name qw qx qy qz tx ty tz fx fy cx cy' "
                               f"(or the first 8), got {len(fields)}")
        if fields[0] in views:
            raise DatasetError(f"{where}: {fields[0]!r} is listed twice")
        values = parse_floats(fields[1:], where, "pose and intrinsics")
        views[fields[0]] = GroundTruthView(fields[0], rigid_from_qt(values[:4], values[4:7], where),
                                           pinhole_camera(values[7:], where) if len(values) == 11 else None)
    return views


def pinhole_camera(fx_fy_cx_cy: np.ndarray, where: str) -> pycolmap.Camera:
    fx, fy, cx, cy = fx_fy_cx_cy
    if min(fx, fy, cx, cy) <= 0:
        raise DatasetError(f"{where}: fx fy cx cy must be positive, got {fx_fy_cx_cy.tolist()}")
    return pycolmap.Camera(model="PINHOLE", width=int(round(2 * cx)), height=int(round(2 * cy)),
                           params=[fx, fy, cx, cy])
