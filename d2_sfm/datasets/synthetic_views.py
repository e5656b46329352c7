"""Shared pieces of the synthetic datasets: rendered views, which surface each view sees, the
query sampling, the ground-truth files and retrieval pairs by covisibility, the output folder."""
from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..colmap import pycolmap
from . import DatasetError
from .aachen import DATABASE_FILE
from .formats import rigid_from_matrix, write_intrinsics_list, write_poses
from .render import PinholeCamera, Rendering, camera_center, project, render
from .scenes import Site

logger = logging.getLogger(__name__)

IMAGE_SIZE = (640, 480)
JPEG_QUALITY = 92
NUM_RETRIEVED = 10
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

