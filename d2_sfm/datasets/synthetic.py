"""Write small synthetic datasets in exactly the layouts and formats of Aachen Day-Night
(v1.0, v1.1) and InLoc, rendered from known poses, with ground truth for the queries.

    python -m d2_sfm.datasets.synthetic --layout aachen|aachen_v1_1|inloc --output DIR
        [--seed S] [--num-db N] [--num-queries N] [--image-size W H] [--overwrite]

Aachen (street canyon; names relative to images_upright/):
    images_upright/db/<1000+i>.jpg
    images_upright/query/day/milestone/day_<i>.jpg, images_upright/query/night/nexus5x/night_<i>.jpg
    queries/{day,night}_time_queries_with_intrinsics.txt     SIMPLE_RADIAL (k = 0)
    v1.0: 3D-models/aachen_cvpr2018_db.nvm, 3D-models/database_intrinsics.txt, aachen.db
    v1.1: 3D-models/aachen_v_1_1/{cameras,images,points3D}.bin
InLoc (two floors DUC1, DUC2; names relative to DIR):
    query/iphone7/IMG_<i>.JPG                                 focal by the 28/36 rule
    database/cutouts/<floor>/<scan>/DUC_cutout_<scan>_<yaw>_0.jpg (+ .jpg.mat with XYZcut)
    database/alignments/<floor>/transformations/DUC_trans_<scan>.txt
Both also get (not part of the real datasets):
    ground_truth/queries.txt             results format, basenames: name qw qx qy qz tx ty tz
    ground_truth/query_intrinsics.txt    name MODEL W H params (full names)
    ground_truth/database.txt            database poses, full names, results format
    ground_truth/database_intrinsics.txt
    ground_truth/query_floors.txt        InLoc only: basename floor
    pairs/pairs-query-gt-covis<k>.txt    hloc pairs: each query with the k database images that
                                         see most of its surface at a similar scale and angle
                                         (from the rendered depth; see `matchable`)
The sparse NVM / model points are surface samples seen (depth-tested) by at least two database
images; their measurements are exact projections.
"""
from __future__ import annotations

import argparse
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..colmap import pycolmap
from . import DatasetError
from .aachen import (DATABASE_FILE, DB_INTRINSICS_FILE, IMAGE_DIR, MODEL_V1_1_DIR, NVM_FILE,
                     QUERY_LIST_FILES)
from .formats import (NvmCamera, NvmModel, NvmPoints, colmap_to_nvm_xy, rigid_from_matrix,
                      write_intrinsics_list, write_nvm, write_pairs, write_poses)
from .inloc import (ALIGNMENT_DIR, QUERY_DIR, cutout_name, inloc_query_focal, write_query_floors,
                    write_transformation, write_xyzcut)
from .render import PinholeCamera, Rendering, apply_night, camera_center, look_at, project, render
from .scenes import Site, room_site, street_site

logger = logging.getLogger(__name__)

LAYOUTS = ("aachen", "aachen_v1_1", "inloc")
DEFAULT_NUM_DB = {"aachen": 24, "aachen_v1_1": 24, "inloc": 24}
DEFAULT_NUM_QUERIES = {"aachen": 12, "aachen_v1_1": 12, "inloc": 8}
IMAGE_SIZE = (640, 480)
JPEG_QUALITY = 92
NUM_RETRIEVED = 10
CUTOUT_HFOV_DEG = 60.0
CUTOUT_YAWS = (0, 60, 120, 180, 240, 300)
SYNTHETIC_FLOORS = {"DUC1": (0.0, 24), "DUC2": (4.0, 110)}  # floor height z0, first scan id
OWNED_ENTRIES = ("images_upright", "3D-models", "queries", DATABASE_FILE, "query", "database",
                 "ground_truth", "pairs")


@dataclass(frozen=True, eq=False)
class View:
    """A rendered image: its dataset name, intrinsics, pose (3, 4) and rendering."""

    name: str
    camera: PinholeCamera
    cam_from_world: np.ndarray
    rendering: Rendering


def colmap_camera(camera: PinholeCamera, model: str) -> pycolmap.Camera:
    """SIMPLE_RADIAL (k = 0), SIMPLE_PINHOLE or PINHOLE camera of a square-pixel PinholeCamera."""
    params = {"SIMPLE_RADIAL": [camera.fx, camera.cx, camera.cy, 0.0],
              "SIMPLE_PINHOLE": [camera.fx, camera.cx, camera.cy],
              "PINHOLE": [camera.fx, camera.fy, camera.cx, camera.cy]}[model]
    return pycolmap.Camera(model=model, width=camera.width, height=camera.height, params=params)


def write_jpeg(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise DatasetError(f"{path}: could not write the image")


def visible(points: np.ndarray, view: View) -> np.ndarray:
    """(N,) bool: the points project inside `view` and are not occluded (depth test)."""
    uv, z = project(points, view.camera, view.cam_from_world)
    h, w = view.rendering.depth.shape
    with np.errstate(invalid="ignore"):
        inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    result = np.zeros(len(points), bool)
    cols, rows = uv[inside, 0].astype(int), uv[inside, 1].astype(int)
    surface = view.rendering.depth[rows, cols]
    with np.errstate(invalid="ignore"):
        result[inside] = np.abs(surface - z[inside]) < 0.02 * z[inside] + 0.03
    return result


def surface_samples(rendering: Rendering, count: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `count` distinct world points (N, 3) seen at random valid pixels."""
    valid = np.flatnonzero(rendering.valid.ravel())
    chosen = rng.choice(valid, size=min(count, len(valid)), replace=False)
    return rendering.xyz.reshape(-1, 3)[chosen].astype(np.float64)


def matchable(points: np.ndarray, query: View, view: View, max_scale: float = 1.6,
              max_angle_deg: float = 40.0) -> np.ndarray:
    """(N,) bool: points of `query` that `view` sees at a similar scale (distance ratio below
    `max_scale`) and from a similar direction (rays within `max_angle_deg`): what a local feature
    without full scale / affine invariance can match."""
    rays_q = camera_center(query.cam_from_world) - points
    rays_v = camera_center(view.cam_from_world) - points
    dist_q, dist_v = np.linalg.norm(rays_q, axis=1), np.linalg.norm(rays_v, axis=1)
    cos = np.sum(rays_q * rays_v, axis=1) / (dist_q * dist_v)
    ratio = np.maximum(dist_q / dist_v, dist_v / dist_q)
    return visible(points, view) & (ratio < max_scale) & (cos > np.cos(np.deg2rad(max_angle_deg)))


def covisibility(query: View, database: list[View], rng: np.random.Generator, samples: int = 400) -> np.ndarray:
    """Fraction of the query's visible surface that each database view sees in a matchable way
    (see `matchable`), (num_db,)."""
    points = surface_samples(query.rendering, samples, rng)
    if len(points) == 0:
        return np.zeros(len(database))
    return np.array([matchable(points, query, view).mean() for view in database])


def is_well_covered(scores: np.ndarray) -> bool:
    """A query worth localising: one database image matchably sees 35 % of it, another 20 %."""
    ordered = np.sort(scores)[::-1]
    return len(ordered) >= 2 and ordered[0] >= 0.35 and ordered[1] >= 0.2


def retrieval_pairs(queries: list[tuple[str, np.ndarray]], db_names: list[str], k: int) -> list[tuple[str, str]]:
    """For each (query name, covisibility scores): the k best database images with score > 0."""
    pairs = []
    for name, scores in queries:
        order = np.argsort(-scores, kind="stable")[:k]
        pairs += [(name, db_names[j]) for j in order if scores[j] > 0]
    return pairs


def sparse_points(views: list[View], rng: np.random.Generator, per_view: int = 150
                  ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Surface points seen by >= 2 views: xyz (N, 3), rgb (N, 3) uint8, and per view the
    (N,) visibility masks."""
    xyz = np.concatenate([surface_samples(v.rendering, per_view, rng) for v in views])
    masks = [visible(xyz, view) for view in views]
    keep = np.sum(masks, axis=0) >= 2
    xyz, masks = xyz[keep], [m[keep] for m in masks]
    rgb = np.zeros((len(xyz), 3), np.uint8)
    for view, mask in zip(views, masks):
        uv, _ = project(xyz[mask], view.camera, view.cam_from_world)
        rgb[mask] = view.rendering.image[uv[:, 1].astype(int), uv[:, 0].astype(int)]
    return xyz, rgb, masks


def write_ground_truth(output: Path, queries: list[tuple[View, pycolmap.Camera]],
                       database: list[tuple[View, pycolmap.Camera]]) -> None:
    gt = output / "ground_truth"
    write_poses(gt / "queries.txt", {v.name.rsplit("/", 1)[-1]: rigid_from_matrix(v.cam_from_world)
                                     for v, _ in queries})
    write_intrinsics_list(gt / "query_intrinsics.txt", {v.name: cam for v, cam in queries})
    write_poses(gt / "database.txt", {v.name: rigid_from_matrix(v.cam_from_world) for v, _ in database})
    write_intrinsics_list(gt / "database_intrinsics.txt", {v.name: cam for v, cam in database})


def prepare_output(output: Path, overwrite: bool) -> Path:
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise DatasetError(f"{output}: folder is not empty (pass --overwrite to replace the dataset in it)")
        for entry in OWNED_ENTRIES:
            path = output / entry
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    output.mkdir(parents=True, exist_ok=True)
    return output


# ----------------------------------------------------------------------------------------------
# Aachen


def street_pose(site: Site, rng: np.random.Generator, heading_deg: float, xy: np.ndarray | None = None,
                roll_deg: float = 0.0) -> np.ndarray:
    """A camera 1.5-2 m above the street looking along `heading_deg` (0 = +y, 90 = +x), slightly up."""
    xy = site.sample_free_xy(rng) if xy is None else xy
    center = np.array([xy[0], xy[1], rng.uniform(1.5, 2.0)])
    heading = np.deg2rad(heading_deg)
    target = center + np.array([10 * np.sin(heading), 10 * np.cos(heading), rng.uniform(0.5, 1.5)])
    return look_at(center, target, roll_deg=roll_deg)


DB_STATION_SPACING = 3.3  # metres between the stations of the Aachen mapping sequence


def aachen_database(site: Site, num_db: int, rng: np.random.Generator, image_size: tuple[int, int]
                    ) -> list[tuple[View, pycolmap.Camera]]:
    """A mapping sequence along the street: stations DB_STATION_SPACING apart (closer if they would
    not fit), centred on the street, each photographing the left facade from the right half of the
    street and the right facade from the left half (fewer than 4 images: the left facade only),
    facade-on give or take 20 degrees in a slow sweep, so that neighbours on one side differ by
    about 20 degrees and a few metres and overlap by well over half."""
    sides = 2 if num_db >= 4 else 1
    stations = -(-num_db // sides)
    y0, y1 = site.walkable[1] + 1, site.walkable[3] - 1
    span = min(DB_STATION_SPACING * (stations - 1), y1 - y0)
    ys = (y0 + y1) / 2 + np.linspace(-span / 2, span / 2, stations)
    sweep = (-20.0, 0.0, 20.0, 0.0)  # heading offset towards +y from the facade normal
    views = []
    for i in range(num_db):
        station, side = divmod(i, sides)
        facing = -1.0 if side == 0 else 1.0  # -1: the facade at -x, 1: the facade at +x
        offset = sweep[(station + 2 * side) % len(sweep)] + rng.uniform(-5, 5)
        xy = np.array([-facing * rng.uniform(0.4, 2.2), ys[station] + rng.uniform(-0.4, 0.4)])
        while not site.is_free(xy):
            xy = np.array([-facing * rng.uniform(0.0, 2.6), ys[station] + rng.uniform(-1.5, 1.5)])
        pose = street_pose(site, rng, facing * (90.0 - offset), xy)
        camera = PinholeCamera.from_hfov(*image_size, rng.uniform(56, 66))
        views.append((View(f"db/{1000 + i}.jpg", camera, pose, render(site.scene, camera, pose)),
                      colmap_camera(camera, "SIMPLE_RADIAL")))
    return views


def sample_query(site: Site, name: str, camera: PinholeCamera, database: list[View], rng: np.random.Generator,
                 make_pose: Callable[[], np.ndarray], max_tries: int = 200) -> tuple[View, np.ndarray]:
    """A query view whose surface is well covered by the database (rejection sampling);
    returns it with its covisibility scores."""
    for _ in range(max_tries):
        pose = make_pose()
        view = View(name, camera, pose, render(site.scene, camera, pose))
        scores = covisibility(view, database, rng)
        if is_well_covered(scores):
            return view, scores
    raise RuntimeError(f"no well-covered pose found for {name} after {max_tries} tries")


def street_query_pose(site: Site, database: list[View], rng: np.random.Generator) -> np.ndarray:
    """A tourist's photo: a facade that the database photographs, taken from the other half of the
    street (as far as the database images are) near one of the inner database images (the ends of
    the sequence see little of the facade around them), within 30 degrees of facade-on, slight roll."""
    centers = np.array([camera_center(v.cam_from_world) for v in database])
    facings = np.sign([v.cam_from_world[2, 0] for v in database])  # x of the viewing direction
    facing = rng.choice(np.unique(facings))
    ys = np.sort(centers[facings == facing, 1])
    inner = ys[1:-1] if len(ys) >= 3 else ys
    for _ in range(1000):
        xy = np.array([-facing * rng.uniform(0.0, 2.6), rng.choice(inner) + rng.uniform(-1.7, 1.7)])
        if site.is_free(xy):
            return street_pose(site, rng, facing * (90.0 + rng.uniform(-30, 30)), xy, roll_deg=rng.uniform(-2, 2))
    raise RuntimeError("no free query position found near the database images")


def aachen_queries(site: Site, database: list[View], num_queries: int, rng: np.random.Generator,
                   image_size: tuple[int, int], image_dir: Path
                   ) -> tuple[list[tuple[View, pycolmap.Camera]], list[tuple[str, np.ndarray]]]:
    """Render and write the queries (the last third at night); returns them with their
    covisibility scores against the database."""
    num_night = num_queries // 3
    queries, scores = [], []
    for i in range(num_queries):
        night = i >= num_queries - num_night
        name = f"query/night/nexus5x/night_{i:03d}.jpg" if night else f"query/day/milestone/day_{i:03d}.jpg"
        camera = PinholeCamera.from_hfov(*image_size, 66.0 if night else 58.0)
        view, score = sample_query(site, name, camera, database, rng, lambda: street_query_pose(site, database, rng))
        write_jpeg(image_dir / name, apply_night(view.rendering.image, rng) if night else view.rendering.image)
        queries.append((view, colmap_camera(camera, "SIMPLE_RADIAL")))
        scores.append((name, score))
    return queries, scores


def write_aachen(output: Path, version: str, seed: int, num_db: int, num_queries: int,
                 image_size: tuple[int, int] = IMAGE_SIZE) -> Path:
    rng = np.random.default_rng(seed)
    site = street_site(rng)
    database = aachen_database(site, num_db, rng, image_size)
    db_views = [v for v, _ in database]
    image_dir = output / IMAGE_DIR
    for view in db_views:
        write_jpeg(image_dir / view.name, view.rendering.image)
    queries, scores = aachen_queries(site, db_views, num_queries, rng, image_size, image_dir)
    for condition, relative in QUERY_LIST_FILES.items():
        write_intrinsics_list(output / relative, {v.name: cam for v, cam in queries
                                                  if v.name.startswith(f"query/{condition}/")})
    xyz, rgb, masks = sparse_points(db_views, rng)
    if version == "v1_0":
        write_aachen_v1_0_models(output, database, xyz, rgb, masks)
    else:
        write_aachen_v1_1_model(output / MODEL_V1_1_DIR, database, xyz, rgb, masks)
    write_ground_truth(output, queries, database)
    k = min(NUM_RETRIEVED, num_db)
    write_pairs(output / "pairs" / f"pairs-query-gt-covis{k}.txt",
                retrieval_pairs(scores, [v.name for v in db_views], k))
    logger.info("Wrote synthetic Aachen %s (%d database images, %d day + %d night queries, %d points) to %s",
                version, num_db, num_queries - num_queries // 3, num_queries // 3, len(xyz), output)
    return output


def observations(view: View, xyz: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(point indices, COLMAP pixel coordinates) of the points visible in `view`."""
    ids = np.flatnonzero(mask)
    uv, _ = project(xyz[ids], view.camera, view.cam_from_world)
    return ids, uv


def write_aachen_v1_0_models(output: Path, database: list[tuple[View, pycolmap.Camera]], xyz: np.ndarray,
                             rgb: np.ndarray, masks: list[np.ndarray]) -> None:
    """NVM v3 model, database_intrinsics.txt and aachen.db (images table) of the database."""
    cameras, point_index, image_index, feature_index, xy = [], [], [], [], []
    for i, ((view, camera), mask) in enumerate(zip(database, masks)):
        cameras.append(NvmCamera.from_pose(view.name, view.camera.fx, rigid_from_matrix(view.cam_from_world)))
        ids, uv = observations(view, xyz, mask)
        point_index.append(ids)
        image_index.append(np.full(len(ids), i))
        feature_index.append(np.arange(len(ids)))
        xy.append(colmap_to_nvm_xy(uv, camera.width, camera.height))
    points = NvmPoints(xyz, rgb, *(np.concatenate(a).astype(np.int64) for a in (point_index, image_index,
                                                                                feature_index)),
                       np.concatenate(xy))
    write_nvm(output / NVM_FILE, NvmModel(tuple(cameras), points))
    write_intrinsics_list(output / DB_INTRINSICS_FILE, {view.name: cam for view, cam in database})
    with pycolmap.Database.open(str(output / DATABASE_FILE)) as db:
        for i, (view, camera) in enumerate(database, start=1):
            camera = pycolmap.Camera(model=camera.model.name, width=camera.width, height=camera.height,
                                     params=camera.params, camera_id=i)
            db.write_camera(camera, use_camera_id=True)
            db.write_image(pycolmap.Image(name=view.name, camera_id=i, image_id=i), use_image_id=True)


def write_aachen_v1_1_model(model_dir: Path, database: list[tuple[View, pycolmap.Camera]], xyz: np.ndarray,
                            rgb: np.ndarray, masks: list[np.ndarray]) -> None:
    """COLMAP model with the database poses, intrinsics, points and tracks; written as the three
    legacy files cameras.bin, images.bin, points3D.bin (pycolmap 4 reads them with trivial rigs)."""
    model = pycolmap.Reconstruction()
    point2d_index: dict[int, list[tuple[int, int]]] = {}
    for i, ((view, camera), mask) in enumerate(zip(database, masks), start=1):
        model.add_camera_with_trivial_rig(pycolmap.Camera(model=camera.model.name, width=camera.width,
                                                          height=camera.height, params=camera.params, camera_id=i))
        ids, uv = observations(view, xyz, mask)
        image = pycolmap.Image(name=view.name, camera_id=i, image_id=i,
                               points2D=[pycolmap.Point2D(p) for p in uv])
        model.add_image_with_trivial_frame(image, rigid_from_matrix(view.cam_from_world))
        for k, point in enumerate(ids):
            point2d_index.setdefault(int(point), []).append((i, k))
    for point, elements in sorted(point2d_index.items()):
        track = pycolmap.Track()
        for image_id, k in elements:
            track.add_element(image_id, k)
        model.add_point3D(xyz[point], track, rgb[point])
    model_dir.mkdir(parents=True, exist_ok=True)
    model.write(str(model_dir))
    for extra in ("rigs.bin", "frames.bin"):  # not in the real (legacy) Aachen v1.1 model
        (model_dir / extra).unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# InLoc


def rotation_z(angle_deg: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(angle_deg)), np.sin(np.deg2rad(angle_deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def perturbed(world_from_scan: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A slightly different alignment (stands in for the pre-GICP estimate)."""
    result = world_from_scan.copy()
    result[:3, :3] = rotation_z(rng.uniform(-1, 1)) @ result[:3, :3]
    result[:3, 3] += rng.uniform(-0.05, 0.05, 3)
    return result


def scan_poses(site: Site, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """world_from_scan (4, 4) of `count` scanner stations >= 3 m apart, 1.5 m above the floor."""
    poses: list[np.ndarray] = []
    while len(poses) < count:
        xy = site.sample_free_xy(rng, margin=1.2)
        if all(np.linalg.norm(xy - p[:2, 3]) >= 3.0 for p in poses) or rng.random() < 0.02:
            pose = np.eye(4)
            pose[:3, :3] = rotation_z(rng.uniform(0, 360))
            pose[:3, 3] = [xy[0], xy[1], site.floor_z + 1.5]
            poses.append(pose)
    return poses


def cutout_pose(world_from_scan: np.ndarray, yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """cam_from_world of a cutout: the scan frame's yaw (about its z) and pitch (up positive)."""
    yaw, pitch = np.deg2rad(yaw_deg), np.deg2rad(pitch_deg)
    direction = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
    cam_from_scan = np.vstack([look_at(np.zeros(3), direction), [0, 0, 0, 1]])
    return (cam_from_scan @ np.linalg.inv(world_from_scan))[:3]


def xyzcut(view: View, site: Site, world_from_scan: np.ndarray) -> np.ndarray:
    """XYZcut (H, W, 3) float64 in the scan frame, NaN where no scannable surface; values rounded
    to float32 precision (about a micrometre here) so that the .mat compresses 7x."""
    xyz = view.rendering.xyz.astype(np.float64)
    unscannable = [k for k, quad in enumerate(site.scene.quads) if not quad.scannable]
    xyz[np.isin(view.rendering.quad_index, unscannable) | ~view.rendering.valid] = np.nan
    scan_from_world = np.linalg.inv(world_from_scan)
    local = xyz @ scan_from_world[:3, :3].T + scan_from_world[:3, 3]
    return local.astype(np.float32).astype(np.float64)


def inloc_pose(site: Site, rng: np.random.Generator) -> np.ndarray:
    """A hand-held query pose: 1.2-1.7 m above the floor, any heading, small pitch and roll."""
    xy = site.sample_free_xy(rng, margin=0.9)
    center = np.array([xy[0], xy[1], site.floor_z + rng.uniform(1.2, 1.7)])
    heading, pitch = np.deg2rad(rng.uniform(0, 360)), np.deg2rad(rng.uniform(-8, 8))
    direction = np.array([np.cos(pitch) * np.cos(heading), np.cos(pitch) * np.sin(heading), np.sin(pitch)])
    return look_at(center, center + direction, roll_deg=rng.uniform(-3, 3))


def inloc_database(output: Path, rng: np.random.Generator, num_db: int, image_size: tuple[int, int]
                   ) -> tuple[dict[str, Site], list[tuple[View, pycolmap.Camera]], list[str]]:
    """Build both floors, write their scans (alignment files) and cutouts (JPEG + XYZcut).
    `num_db` is rounded up to whole scans of len(CUTOUT_YAWS) cutouts, equally many per floor.
    Returns the sites, the cutouts with their cameras, and the floor of each cutout."""
    scans_per_floor = max(1, -(-num_db // (len(SYNTHETIC_FLOORS) * len(CUTOUT_YAWS))))
    camera = PinholeCamera.from_hfov(*image_size, CUTOUT_HFOV_DEG)
    sites, database, floor_of_db = {}, [], []
    for floor, (z0, first_scan) in SYNTHETIC_FLOORS.items():
        sites[floor] = site = room_site(rng, z0=z0)
        for s, world_from_scan in enumerate(scan_poses(site, scans_per_floor, rng)):
            scan_id = f"{first_scan + s:03d}"
            write_transformation(output / ALIGNMENT_DIR / floor / "transformations" / f"DUC_trans_{scan_id}.txt",
                                 world_from_scan, perturbed(world_from_scan, rng))
            for yaw in CUTOUT_YAWS:
                pose = cutout_pose(world_from_scan, yaw, 0)
                view = View(cutout_name(floor, scan_id, "DUC", yaw, 0), camera, pose, render(site.scene, camera, pose))
                write_jpeg(output / view.name, view.rendering.image)
                write_xyzcut(output / (view.name + ".mat"), xyzcut(view, site, world_from_scan))
                database.append((view, colmap_camera(camera, "PINHOLE")))
                floor_of_db.append(floor)
    return sites, database, floor_of_db


def write_inloc(output: Path, seed: int, num_db: int, num_queries: int,
                image_size: tuple[int, int] = IMAGE_SIZE) -> Path:
    rng = np.random.default_rng(seed)
    sites, database, floor_of_db = inloc_database(output, rng, num_db, image_size)
    focal = inloc_query_focal(*image_size)
    camera = PinholeCamera(*image_size, focal, focal, image_size[0] / 2, image_size[1] / 2)
    queries, scores, floors = [], [], {}
    for i in range(num_queries):
        floor = list(SYNTHETIC_FLOORS)[i % len(SYNTHETIC_FLOORS)]
        on_floor = [j for j, f in enumerate(floor_of_db) if f == floor]
        name = f"{QUERY_DIR}/IMG_{i + 1:04d}.JPG"
        view, score = sample_query(sites[floor], name, camera, [database[j][0] for j in on_floor], rng,
                                   lambda: inloc_pose(sites[floor], rng))
        write_jpeg(output / name, view.rendering.image)
        queries.append((view, colmap_camera(camera, "SIMPLE_PINHOLE")))
        full_score = np.zeros(len(database))  # 0 for the other floor
        full_score[on_floor] = score
        scores.append((name, full_score))
        floors[name.rsplit("/", 1)[-1]] = floor
    write_ground_truth(output, queries, database)
    write_query_floors(output / "ground_truth" / "query_floors.txt", floors)
    k = min(NUM_RETRIEVED, len(database))
    write_pairs(output / "pairs" / f"pairs-query-gt-covis{k}.txt",
                retrieval_pairs(scores, [v.name for v, _ in database], k))
    logger.info("Wrote synthetic InLoc (%d cutouts, %d queries) to %s", len(database), num_queries, output)
    return output


# ----------------------------------------------------------------------------------------------
# entry points


MAX_IMAGES = 20000  # per kind: Aachen v1.1 has 6,697 database images, InLoc about 10,000 cutouts
MAX_IMAGE_SIDE = 4096  # px: rendering allocates several float buffers per pixel


def main(layout: str, output: Path, seed: int = 0, num_db: int | None = None, num_queries: int | None = None,
         overwrite: bool = False, image_size: tuple[int, int] = IMAGE_SIZE) -> Path:
    """Write a synthetic dataset with the `layout` of a real one into `output`; returns `output`.

    num_db / num_queries default to DEFAULT_NUM_DB / DEFAULT_NUM_QUERIES of the layout; all
    images are `image_size` (W, H)."""
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    num_db = DEFAULT_NUM_DB[layout] if num_db is None else num_db
    num_queries = DEFAULT_NUM_QUERIES[layout] if num_queries is None else num_queries
    if not 2 <= num_db <= MAX_IMAGES or not 1 <= num_queries <= MAX_IMAGES:
        raise DatasetError(f"need 2..{MAX_IMAGES} database images and 1..{MAX_IMAGES} queries, got {num_db} and "
                           f"{num_queries}")
    if min(image_size) < 32 or max(image_size) > MAX_IMAGE_SIDE:
        raise DatasetError(f"image size must be within 32..{MAX_IMAGE_SIDE} px per side, got {image_size}")
    if seed < 0:
        raise DatasetError(f"seed must be a non-negative integer, got {seed}")
    output = prepare_output(output, overwrite)
    if layout == "inloc":
        return write_inloc(output, seed, num_db, num_queries, image_size)
    return write_aachen(output, "v1_0" if layout == "aachen" else "v1_1", seed, num_db, num_queries, image_size)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m d2_sfm.datasets.synthetic",
                                     description="Write a small synthetic dataset in the exact layout of "
                                                 "Aachen Day-Night v1.0 / v1.1 or InLoc.")
    parser.add_argument("--layout", choices=LAYOUTS, required=True)
    parser.add_argument("--output", type=Path, required=True, help="dataset folder to create")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-db", type=int, default=None,
                        help=f"database images; InLoc: rounded up to whole scans of {len(CUTOUT_YAWS)} cutouts "
                             f"per floor (default {DEFAULT_NUM_DB})")
    parser.add_argument("--num-queries", type=int, default=None,
                        help=f"queries; Aachen: the last third are night (default {DEFAULT_NUM_QUERIES})")
    parser.add_argument("--image-size", type=int, nargs=2, default=IMAGE_SIZE, metavar=("W", "H"),
                        help="size of every image (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already in --output")
    return parser


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    main(args.layout, args.output, args.seed, args.num_db, args.num_queries, args.overwrite, tuple(args.image_size))
    return 0


if __name__ == "__main__":
    from ..cli import run_cli

    raise SystemExit(run_cli(cli))
