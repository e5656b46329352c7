"""The synthetic InLoc look-alike: two floors of scans, six cutouts per scan with their XYZcut,
alignments, and iPhone-like queries (layout: see `d2_sfm.datasets.synthetic`)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..colmap import pycolmap
from .formats import write_pairs
from .inloc import (ALIGNMENT_DIR, QUERY_DIR, cutout_name, inloc_query_focal, write_query_floors,
                    write_transformation, write_xyzcut)
from .render import PinholeCamera, look_at, render
from .scenes import Site, room_site
from .synthetic_views import (IMAGE_SIZE, NUM_RETRIEVED, View, colmap_camera, retrieval_pairs, sample_query,
                              write_ground_truth, write_jpeg)

logger = logging.getLogger(__name__)

CUTOUT_HFOV_DEG = 60.0
CUTOUT_YAWS = (0, 60, 120, 180, 240, 300)
SYNTHETIC_FLOORS = {"DUC1": (0.0, 24), "DUC2": (4.0, 110)}  # floor height z0, first scan id


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
