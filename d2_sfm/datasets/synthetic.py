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
from pathlib import Path

import numpy as np

from ..colmap import pycolmap
from . import DatasetError
from .aachen import DATABASE_FILE, DB_INTRINSICS_FILE, IMAGE_DIR, MODEL_V1_1_DIR, NVM_FILE, QUERY_LIST_FILES
from .formats import (NvmCamera, NvmModel, NvmPoints, colmap_to_nvm_xy, rigid_from_matrix, write_intrinsics_list,
                      write_nvm, write_pairs)
from .render import PinholeCamera, apply_night, camera_center, look_at, project, render
from .scenes import Site, street_site
from .synthetic_inloc import CUTOUT_YAWS, write_inloc
from .synthetic_views import (IMAGE_SIZE, NUM_RETRIEVED, View, colmap_camera, prepare_output, retrieval_pairs,
                              sample_query, sparse_points, write_ground_truth, write_jpeg)

logger = logging.getLogger(__name__)

LAYOUTS = ("aachen", "aachen_v1_1", "inloc")
DEFAULT_NUM_DB = {"aachen": 24, "aachen_v1_1": 24, "inloc": 24}
DEFAULT_NUM_QUERIES = {"aachen": 12, "aachen_v1_1": 12, "inloc": 8}


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
            camera = pycolmap.Camera(model=camera.model, width=camera.width, height=camera.height,
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
        model.add_camera_with_trivial_rig(pycolmap.Camera(model=camera.model, width=camera.width,
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
