"""What report.html shows, gathered from a reconstruct or localize run folder: the summary, the
model, the 3D scene (points and camera frusta), per-image rows and match pictures."""
from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .colmap import pycolmap
from .colmap_import import PairStats, read_pair_stats
from .colmap_model import read_model
from .datasets.formats import rigid_from_qt
from .errors import D2SfmError
from .h5io import feature_shapes, read_keypoints, read_matches
from .images import ImageError, read_image
from .paths import resolve_inside
from .run_folder import MODEL_DIRS, read_summary, run_kind
from .visualize import draw_matches, verified_mask

logger = logging.getLogger(__name__)

NUM_PAIR_PLOTS = 2  # strongest and weakest each
PLOT_HEIGHT = 260


class ReportError(D2SfmError, ValueError):
    """A folder that holds no run to report on, or a report that cannot be written."""


# ----------------------------------------------------------------------------------------------
# What the run left


@dataclass
class RunContents:
    root: Path
    kind: str  # reconstruct | localize
    summary: dict
    model: pycolmap.Reconstruction | None
    features: Path | None
    pair_stats: list[PairStats] = field(default_factory=list)
    database: Path | None = None
    image_dir: Path | None = None
    notes: list[str] = field(default_factory=list)  # what could not be shown, and why


def load_run(root: Path) -> RunContents:
    """Whatever of a run is present; missing or unreadable parts become notes, not failures."""
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"{root} is not a folder (expected a reconstruct or localize output folder)")
    summary = read_summary(root / "summary.json", ReportError)
    kind = run_kind(root, summary)
    model_dir = root / MODEL_DIRS[kind]
    if not summary and not model_dir.is_dir():
        raise ReportError(f"{root} holds neither summary.json nor a model: not a reconstruct or localize "
                          "output folder, or the run has not finished")
    run = RunContents(root, kind, summary, None,
                      root / "features.h5" if (root / "features.h5").is_file() else None)
    if model_dir.is_dir():
        try:
            run.model = read_model(model_dir, ReportError)
        except ReportError as error:
            run.notes.append(f"model not shown: {error}")
    pairs_json = root / "database.pairs.json"
    if pairs_json.is_file():
        try:
            run.pair_stats = read_pair_stats(pairs_json)
        except (OSError, ValueError, TypeError) as error:
            run.notes.append(f"pair statistics not shown: {pairs_json} is unreadable ({error})")
    run.database = root / "database.db" if (root / "database.db").is_file() else None
    run.image_dir = find_image_dir(run)
    return run


def find_image_dir(run: RunContents) -> Path | None:
    """reconstruct records its image folder; localize its dataset root (images below it)."""
    if isinstance(run.summary.get("images"), str):
        folder = Path(run.summary["images"])
        return folder if folder.is_dir() else None
    if isinstance(run.summary.get("root"), str):
        root = Path(run.summary["root"])
        for candidate in (root / "images_upright", root / "images", root):
            if candidate.is_dir():
                return candidate
    return None


# ----------------------------------------------------------------------------------------------
# 3D view data


def rotation_matrix(pose: pycolmap.Rigid3d) -> np.ndarray:
    return np.asarray(pose.rotation.matrix(), np.float64)


def camera_entry(name: str, kind: str, pose: pycolmap.Rigid3d, corners_normalised: np.ndarray,
                 depth: float) -> dict:
    """Centre and the 4 frustum corners (world) of a camera at `depth` in front of it."""
    rotation = rotation_matrix(pose)
    centre = -rotation.T @ np.asarray(pose.translation, np.float64)
    rays = np.concatenate([corners_normalised, np.ones((4, 1))], axis=1) * depth
    corners = (rotation.T @ rays.T).T + centre
    return {"name": name, "kind": kind, "c": np.round(centre, 5).tolist(), "corners": np.round(corners, 5).tolist()}


def normalised_corners(camera: pycolmap.Camera | None, size: tuple[int, int] | None = None) -> np.ndarray:
    """Image corners as normalised rays; unknown intrinsics: a 60-degree frustum of the image's aspect."""
    if camera is not None:
        corners = np.array([[0, 0], [camera.width, 0], [camera.width, camera.height], [0, camera.height]], float)
        try:
            rays = np.asarray(camera.cam_from_img(corners), float).reshape(4, 2)
            if np.isfinite(rays).all():
                return rays
        except (ValueError, RuntimeError, TypeError):
            pass
        size = (camera.width, camera.height)
    width, height = size or (4, 3)
    half = np.tan(np.radians(30.0))
    aspect = height / max(width, 1)
    return np.array([[-half, -half * aspect], [half, -half * aspect], [half, half * aspect], [-half, half * aspect]])


def view_basis(poses: list[pycolmap.Rigid3d]) -> np.ndarray:
    """Rows: screen right, screen up, viewing direction; the cameras' mean view (up = image up)."""
    if not poses:
        return np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    rotations = np.stack([rotation_matrix(p) for p in poses])
    forward = rotations[:, 2, :].mean(axis=0)
    up = -rotations[:, 1, :].mean(axis=0)
    if np.linalg.norm(forward) < 1e-6:  # cameras all around: look along the mean image-down axis
        forward = np.cross(up, [1.0, 0, 0]) if abs(up[0]) < 0.9 else np.cross(up, [0, 1.0, 0])
    forward /= np.linalg.norm(forward)
    up = up - up @ forward * forward
    if np.linalg.norm(up) < 1e-6:
        up = np.cross(forward, [1.0, 0, 0]) if abs(forward[0]) < 0.9 else np.cross(forward, [0, 1.0, 0])
    up /= np.linalg.norm(up)
    right = np.cross(forward, up)
    return np.stack([right, up, forward])


def scene_data(run: RunContents, max_points: int) -> dict | None:
    """Points (subsampled, fixed seed), camera frusta and the initial view, for viewer.js."""
    model = run.model
    cameras: list[tuple[str, str, pycolmap.Rigid3d, np.ndarray]] = []
    xyz, rgb = np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
    if model is not None:
        ids = sorted(model.points3D)
        if ids:
            xyz = np.array([model.points3D[i].xyz for i in ids], np.float64)
            rgb = np.array([model.points3D[i].color for i in ids], np.uint8)
        for image in model.images.values():
            if image.has_pose:
                cameras.append((image.name, "registered", image.cam_from_world(),
                                normalised_corners(model.cameras[image.camera_id])))
    sizes = keypoint_counts_and_sizes(run.features, [q["name"] for q in queries_of(run)])[1]
    for query in queries_of(run):
        pose = query.get("cam_from_world")
        if pose:
            try:
                rigid = rigid_from_qt(pose["qvec_wxyz"], pose["tvec"], "summary.json")
            except (KeyError, TypeError, ValueError, D2SfmError):
                continue
            cameras.append((str(query["name"]), "query", rigid, normalised_corners(None, sizes.get(query["name"]))))
    if not len(xyz) and not cameras:
        return None
    if len(xyz) > max_points:
        keep = np.sort(np.random.default_rng(0).choice(len(xyz), max_points, replace=False))
        xyz, rgb = xyz[keep], rgb[keep]
    centres = np.array([-rotation_matrix(p).T @ np.asarray(p.translation) for _, _, p, _ in cameras]).reshape(-1, 3)
    cloud = xyz if len(xyz) else centres
    centre = np.median(cloud, axis=0)
    spread = [np.percentile(np.linalg.norm(a - centre, axis=1), 90) for a in (xyz, centres) if len(a)]
    radius = float(max(max(spread), 1e-6))
    depth = 0.08 * radius
    return {
        "view": {"centre": np.round(centre, 5).tolist(), "radius": radius,
                 "basis": np.round(view_basis([p for _, _, p, _ in cameras]), 6).reshape(-1).tolist()},
        "points": {"xyz": np.round(xyz.astype(np.float32), 4).reshape(-1).tolist(), "rgb": rgb.reshape(-1).tolist(),
                   "total": model.num_points3D() if model is not None else 0},
        "cameras": [camera_entry(name, kind, pose, corners, depth) for name, kind, pose, corners in cameras],
    }


# ----------------------------------------------------------------------------------------------
# Tables


def queries_of(run: RunContents) -> list[dict]:
    queries = run.summary.get("queries") if run.kind == "localize" else None
    return [q for q in queries if isinstance(q, dict) and "name" in q] if isinstance(queries, list) else []


def keypoint_counts_and_sizes(features: Path | None, names: list[str] | None = None
                              ) -> tuple[dict[str, int], dict[str, tuple[int, int]]]:
    """Keypoints per image (from the dataset shapes, no data read) and image sizes."""
    if features is None:
        return {}, {}
    try:
        return feature_shapes(features, names)
    except D2SfmError as error:
        logger.warning("Keypoint statistics left out: %s", error)
        return {}, {}


def image_rows(run: RunContents) -> list[dict]:
    """Per image: registered, camera, keypoints, observed 3D points, verified pairs, problems."""
    counts, _ = keypoint_counts_and_sizes(run.features)
    in_model = {im.name: im for im in run.model.images.values()} if run.model is not None else {}
    kept: dict[str, int] = {}
    for stat in run.pair_stats:
        if stat.kept:
            kept[stat.name0] = kept.get(stat.name0, 0) + 1
            kept[stat.name1] = kept.get(stat.name1, 0) + 1
    weak = run.summary.get("weak_images") or {}
    failed = run.summary.get("failed_images") or {}
    suspect = run.summary.get("feature_warnings") or {}
    names = sorted(set(counts) | set(in_model) | set(failed))
    rows = []
    for name in names:
        image = in_model.get(name)
        registered = bool(image is not None and image.has_pose)
        problem = failed.get(name) or weak.get(name) or suspect.get(name) or ""
        rows.append({"name": name, "registered": registered, "camera": image.camera_id if image is not None else "",
                     "keypoints": counts.get(name, 0), "points3D": image.num_points3D if registered else 0,
                     "pairs": kept.get(name, 0), "problem": str(problem)})
    return rows


# ----------------------------------------------------------------------------------------------
# Match pictures


def choose_pairs(stats: list[PairStats], count: int) -> list[tuple[str, PairStats]]:
    """The `count` strongest kept pairs and the `count` weakest kept ones (the weakest links the model
    used); without kept pairs beyond the strongest, the weakest verified or matched ones."""
    kept = sorted((s for s in stats if s.kept), key=lambda s: (-s.num_inliers, s.name0, s.name1))
    strongest = kept[:count]
    others = [s for s in stats if s not in strongest]
    weak_kept = sorted((s for s in others if s.kept), key=lambda s: (s.num_inliers, s.name0, s.name1))
    verified = sorted((s for s in others if s.num_inliers > 0), key=lambda s: (s.num_inliers, s.name0, s.name1))
    weakest = (weak_kept or verified or sorted(others, key=lambda s: (s.num_matches, s.name0, s.name1)))[:count]
    return [("strongest", s) for s in strongest] + [("weakest", s) for s in weakest]


def jpeg_data_uri(image_bgr: np.ndarray, quality: int = 82) -> str:
    ok, encoded = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ReportError("OpenCV could not encode a match picture")
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def pair_picture(run: RunContents, matches_file: Path, name0: str, name1: str, with_inliers: bool) -> str:
    pairs, _ = read_matches(matches_file, name0, name1)
    mask = verified_mask(run.database, name0, name1, pairs) if with_inliers and run.database else None
    canvas = draw_matches(read_image(resolve_inside(run.image_dir, name0)),
                          read_image(resolve_inside(run.image_dir, name1)),
                          read_keypoints(run.features, name0), read_keypoints(run.features, name1),
                          pairs, mask, max_height=PLOT_HEIGHT)
    return jpeg_data_uri(canvas)


def match_plots(run: RunContents) -> list[dict]:
    """Pictures (data URIs) of a few pairs; each failure is a note, the page is still written."""
    if run.features is None or run.image_dir is None:
        run.notes.append("match pictures left out: the image folder or features.h5 is not available")
        return []
    plots, chosen = [], []
    if run.kind == "reconstruct":
        matches_file = run.root / "matches.h5"
        for label, stat in choose_pairs(run.pair_stats, NUM_PAIR_PLOTS):
            caption = (f"{label}: {stat.name0} - {stat.name1}: {stat.num_inliers} verified inliers of "
                       f"{stat.num_matches} matches ({stat.configuration}{', kept' if stat.kept else ', rejected'}"
                       f"{': ' + stat.reason if stat.reason else ''})")
            chosen.append((matches_file, stat.name0, stat.name1, caption, True))
    else:
        matches_file = run.root / "matches-query.h5"
        usable = [q for q in queries_of(run) if q.get("db_used")]
        ranked = sorted(usable, key=lambda q: (-int(q.get("num_inliers") or 0), str(q["name"])))
        picked = ranked[:NUM_PAIR_PLOTS] + [q for q in ranked[::-1][:NUM_PAIR_PLOTS] if q not in ranked[:NUM_PAIR_PLOTS]]
        for query in picked:
            caption = (f"query {query['name']} - {query['db_used'][0]}: pose with {query.get('num_inliers', 0)} inliers "
                       f"of {query.get('num_correspondences', 0)} 2D-3D matches (raw 2D matches drawn)")
            chosen.append((matches_file, str(query["name"]), str(query["db_used"][0]), caption, False))
    for matches_file, name0, name1, caption, with_inliers in chosen:
        try:
            plots.append({"caption": caption, "src": pair_picture(run, matches_file, name0, name1, with_inliers)})
        except (D2SfmError, ImageError, OSError, KeyError, ValueError) as error:
            run.notes.append(f"match picture of ({name0}, {name1}) left out: {error}")
    return plots
