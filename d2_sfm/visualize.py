"""Pictures of a reconstruction: a top view of points and cameras, and the matches of an image pair.

python -m d2_sfm.visualize overview --model OUT/sfm --output OUT/overview.png
python -m d2_sfm.visualize matches --images DIR --features OUT/features.h5 --matches OUT/matches.h5
                                   --pair NAME0 NAME1 --output pair.jpg [--database OUT/database.db]

The top view looks down the mean "up" direction of the cameras (minus their image y axis), so it
needs no gravity prior; cameras are drawn as a dot with a line along their viewing direction.
Match pictures draw verified inliers (from the database's two-view geometry) in green and the
other raw matches in red. Keypoints here are in d2_sfm's convention (top-left pixel centre at 0).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import cv2
import numpy as np

from .colmap import pycolmap
from .atomic import atomic_path
from .cli import run_cli
from .colmap_model import read_model
from .colmap_readonly import read_image_ids, read_two_view_inliers
from .errors import D2SfmError
from .h5io import open_h5, read_image_size, read_keypoints, read_matches, stored_feature_id
from .images import read_image
from .paths import check_output_path, resolve_inside

logger = logging.getLogger(__name__)

MAX_POINTS_DRAWN = 60000


class VisualizationError(D2SfmError, ValueError):
    """Something to draw is missing (model, pair, image); the message names it."""


def top_view_axes(cam_from_worlds: list[pycolmap.Rigid3d], centres: np.ndarray) -> np.ndarray:
    """(2, 3) world->view axes: orthonormal, perpendicular to the cameras' mean up direction."""
    up = np.mean([-pose.rotation.matrix()[1] for pose in cam_from_worlds], axis=0)
    up /= np.linalg.norm(up) + 1e-12
    spread = centres - centres.mean(axis=0)
    spread = spread - np.outer(spread @ up, up)
    if len(centres) > 1 and np.linalg.norm(spread) > 1e-9:
        first = np.linalg.svd(spread, full_matrices=False)[2][0]
    else:
        first = np.cross(up, [1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.cross(up, [0.0, 1.0, 0.0])
    first /= np.linalg.norm(first)
    return np.stack([first, np.cross(up, first)])


def draw_overview(reconstruction: pycolmap.Reconstruction, size: int = 900) -> np.ndarray:
    """BGR image (size, size) of points (their colours) and cameras seen from above."""
    images = [im for im in reconstruction.images.values() if im.has_pose]
    if not images:
        raise VisualizationError("the model has no registered image to draw")
    poses = [im.cam_from_world() for im in images]
    centres = np.array([im.projection_center() for im in images])
    points = np.array([p.xyz for p in reconstruction.points3D.values()]).reshape(-1, 3)
    colours = np.array([p.color for p in reconstruction.points3D.values()], np.uint8).reshape(-1, 3)
    if len(points) > MAX_POINTS_DRAWN:
        keep = np.random.default_rng(0).choice(len(points), MAX_POINTS_DRAWN, replace=False)
        points, colours = points[keep], colours[keep]
    axes = top_view_axes(poses, centres)
    points_2d, centres_2d = points @ axes.T, centres @ axes.T
    extent = np.vstack([centres_2d, np.percentile(points_2d, [2, 98], axis=0) if len(points_2d) else centres_2d])
    low, high = extent.min(axis=0), extent.max(axis=0)
    span = max(float((high - low).max()), 1e-9)
    margin = 40
    scale = (size - 2 * margin) / span
    offset = margin + ((size - 2 * margin) - (high - low) * scale) / 2

    def to_pixels(xy: np.ndarray) -> np.ndarray:
        pixel = (xy - low) * scale + offset
        pixel[:, 1] = size - pixel[:, 1]
        return np.round(pixel).astype(np.int32)

    canvas = np.full((size, size, 3), 255, np.uint8)
    pixels = to_pixels(points_2d) if len(points_2d) else np.zeros((0, 2), np.int32)
    for dy in (0, 1):  # 2x2 px dots
        for dx in (0, 1):
            shifted = pixels + (dx, dy)
            inside = (shifted >= 0).all(axis=1) & (shifted < size).all(axis=1)
            canvas[shifted[inside, 1], shifted[inside, 0]] = colours[inside, ::-1]
    directions = np.array([pose.rotation.matrix()[2] for pose in poses]) @ axes.T
    ends = to_pixels(centres_2d + directions * 0.06 * span)
    for start, end in zip(to_pixels(centres_2d), ends):
        cv2.line(canvas, tuple(map(int, start)), tuple(map(int, end)), (0, 0, 200), 2, cv2.LINE_AA)
        cv2.circle(canvas, tuple(map(int, start)), 4, (200, 0, 0), -1, cv2.LINE_AA)
    text = f"{len(images)} cameras, {reconstruction.num_points3D()} points (top view)"
    cv2.putText(canvas, text, (10, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
MIN_SIZE, MAX_SIZE = 64, 8192  # px of the overview's side


def write_picture(output: Path, picture: np.ndarray) -> Path:
    """Write a BGR picture atomically (PNG or JPEG, chosen by the name)."""
    output = check_output_path(output, PICTURE_SUFFIXES, "picture")
    with atomic_path(output) as partial:
        ok, encoded = cv2.imencode(output.suffix.lower(), picture)
        if not ok:
            raise VisualizationError(f"could not encode {output}")
        partial.write_bytes(encoded.tobytes())
    return output


def save_overview(reconstruction: pycolmap.Reconstruction, output: Path, size: int = 900) -> Path:
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise VisualizationError(f"overview size {size} px is outside {MIN_SIZE}..{MAX_SIZE}")
    check_output_path(output, PICTURE_SUFFIXES, "picture")
    return write_picture(output, draw_overview(reconstruction, size))


def draw_matches(image0: np.ndarray, image1: np.ndarray, keypoints0: np.ndarray, keypoints1: np.ndarray,
                 matches: np.ndarray, inlier_mask: np.ndarray | None = None, max_height: int = 480) -> np.ndarray:
    """Side-by-side BGR picture; matches (M, 2) index keypoints (N, 2) x, y (pixel centre = integer)."""
    scales = [min(1.0, max_height / im.shape[0]) for im in (image0, image1)]
    resized = [cv2.resize(im, (round(im.shape[1] * s), round(im.shape[0] * s)), interpolation=cv2.INTER_AREA)
               for im, s in zip((image0, image1), scales)]
    height = max(im.shape[0] for im in resized)
    canvas = np.full((height, resized[0].shape[1] + resized[1].shape[1], 3), 255, np.uint8)
    canvas[:resized[0].shape[0], :resized[0].shape[1]] = resized[0][..., ::-1]
    canvas[:resized[1].shape[0], resized[0].shape[1]:] = resized[1][..., ::-1]
    shift = np.array([resized[0].shape[1], 0.0])
    mask = np.ones(len(matches), bool) if inlier_mask is None else np.asarray(inlier_mask, bool)
    for (i, j), inlier in sorted(zip(matches, mask), key=lambda m: m[1]):  # inliers drawn last, on top
        p0 = (keypoints0[i] + 0.5) * scales[0] - 0.5
        p1 = (keypoints1[j] + 0.5) * scales[1] - 0.5 + shift
        colour = (0, 170, 0) if inlier else (0, 0, 220)
        cv2.line(canvas, tuple(np.round(p0).astype(int)), tuple(np.round(p1).astype(int)), colour, 1, cv2.LINE_AA)
    label = f"{len(matches)} matches"
    if inlier_mask is not None:
        label = f"{int(mask.sum())} inliers / {label}"
    cv2.putText(canvas, label, (10, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 3, cv2.LINE_AA)
    cv2.putText(canvas, label, (10, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def verified_mask(database: Path, name0: str, name1: str, matches: np.ndarray) -> np.ndarray | None:
    """Which of `matches` (indices into name0, name1) the database's two-view geometry kept;
    None when an image is not in the database. Reads the database without changing it."""
    ids = read_image_ids(database)
    if name0 not in ids or name1 not in ids:
        return None
    inliers = read_two_view_inliers(database, ids[name0][0], ids[name1][0])
    if inliers is None:
        return np.zeros(len(matches), bool)
    inlier_set = {tuple(m) for m in inliers.tolist()}
    return np.array([(int(i), int(j)) in inlier_set for i, j in matches], bool)


def save_pair_matches(image_dir: Path, features: Path, matches: Path, name0: str, name1: str, output: Path,
                      database: Path | None = None) -> Path:
    """Picture of the matches of one pair; with `database`, verified inliers green, others red."""
    check_output_path(output, PICTURE_SUFFIXES, "picture")
    keypoints0, keypoints1 = read_keypoints(features, name0), read_keypoints(features, name1)
    images = [read_image(resolve_inside(image_dir, name)) for name in (name0, name1)]
    for name, image in zip((name0, name1), images):
        if read_image_size(features, name) != (image.shape[1], image.shape[0]):
            size = read_image_size(features, name)
            raise VisualizationError(f"{features}: the features of {name} are of a {size[0]}x{size[1]} image, but "
                                     f"{resolve_inside(image_dir, name)} is {image.shape[1]}x{image.shape[0]}")
    with open_h5(features, "features file") as f:
        ids = (stored_feature_id(f, name0), stored_feature_id(f, name1))
    pair_matches, _ = read_matches(matches, name0, name1, (len(keypoints0), len(keypoints1)), ids)
    if database is not None and not Path(database).is_file():
        raise VisualizationError(f"COLMAP database {database} does not exist")
    mask = verified_mask(database, name0, name1, pair_matches) if database is not None else None
    canvas = draw_matches(*images, keypoints0, keypoints1, pair_matches, mask)
    write_picture(output, canvas)
    logger.info("Wrote %s", output)
    return Path(output)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m d2_sfm.visualize", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    overview = commands.add_parser("overview", help="top view of a COLMAP model")
    overview.add_argument("--model", type=Path, required=True, help="COLMAP model folder, e.g. OUT/sfm")
    overview.add_argument("--output", type=Path, required=True, help="PNG to write")
    overview.add_argument("--size", type=int, default=900)
    pair = commands.add_parser("matches", help="matches of one image pair")
    pair.add_argument("--images", type=Path, required=True)
    pair.add_argument("--features", type=Path, required=True)
    pair.add_argument("--matches", type=Path, required=True)
    pair.add_argument("--pair", nargs=2, metavar=("NAME0", "NAME1"), required=True)
    pair.add_argument("--database", type=Path, help="colour verified inliers from this COLMAP database")
    pair.add_argument("--output", type=Path, required=True, help="image to write (.jpg/.png)")
    return parser


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "overview":
        save_overview(read_model(args.model, VisualizationError), args.output, args.size)
        logger.info("Wrote %s", args.output)
    else:
        save_pair_matches(args.images, args.features, args.matches, *args.pair, args.output, args.database)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(cli))
