"""OUT/report.html: one self-contained page to look at a reconstruct or localize run.

python -m d2_sfm.report OUT [--max-points 50000] [--output FILE]

The page works offline (no CDN, no network): an interactive 3D view of the points (coloured,
subsampled to --max-points) and cameras (frusta; drag to rotate, shift- or right-drag to pan,
wheel to zoom) drawn on a <canvas> by d2_sfm/report_assets/viewer.js, which is inlined together
with the data (JSON); per-image registration and keypoint statistics; match pictures of the
strongest and weakest verified pairs (OpenCV drawings, inlined as JPEG data URIs); the
reliability warnings; timings and settings from summary.json; for localize runs, per-query
inliers, failures and, with ground truth, position and rotation errors.

Everything read from the run (image names, warnings) is HTML-escaped, and the JSON data block
cannot close its <script> element. A small script records JavaScript errors into
<pre id="d2sfm-errors"> (shown when not empty) so that a broken page says so, also to tests.
The file is written to `report.html.partial` and renamed when complete.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import h5py
import numpy as np

from .colmap import pycolmap
from .cli import run_cli
from .colmap_db import PairStats, read_pair_stats
from .colmap_model import read_model
from .datasets.formats import rigid_from_qt
from .errors import D2SfmError
from .h5io import open_h5, read_keypoints, read_matches
from .images import ImageError, read_image
from .localization.estimation import results_name
from .paths import resolve_inside
from .visualize import draw_matches, verified_mask

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).with_name("report_assets")
REPORT_NAME = "report.html"
MAX_POINTS = 50_000
NUM_PAIR_PLOTS = 2  # strongest and weakest each
PLOT_HEIGHT = 260
MAX_TABLE_ROWS = 5000


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
    summary_path = root / "summary.json"
    summary: dict = {}
    if summary_path.is_file():
        try:
            loaded = json.loads(summary_path.read_text())
            summary = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError) as error:
            raise ReportError(f"{summary_path}: not a readable summary.json ({error})") from None
    localize = "dataset" in summary or (root / "sfm_d2").is_dir() or (root / "matches-query.h5").exists()
    model_dir = root / ("sfm_d2" if localize else "sfm")
    if not summary and not model_dir.is_dir():
        raise ReportError(f"{root} holds neither summary.json nor a model: not a reconstruct or localize "
                          "output folder, or the run has not finished")
    run = RunContents(root, "localize" if localize else "reconstruct", summary, None,
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
    counts, sizes = {}, {}
    if features is None:
        return counts, sizes
    try:
        with open_h5(features, "features file") as f:
            if names is None:
                names = []
                f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Group) and "keypoints" in o else None)
            for name in names:
                if name in f and "keypoints" in f[name]:
                    counts[name] = int(f[name]["keypoints"].shape[0])
                    if "image_size" in f[name]:
                        sizes[name] = tuple(int(v) for v in f[name]["image_size"][()])
    except D2SfmError as error:
        logger.warning("Keypoint statistics left out: %s", error)
    return counts, sizes


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


# ----------------------------------------------------------------------------------------------
# HTML


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def json_for_script(data: object) -> str:
    """JSON that cannot end its <script> element (or open a comment) whatever strings it holds."""
    return (json.dumps(data, separators=(",", ":"), allow_nan=False, default=str)
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def table(headers: list[str], rows: list[list[object]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows[:MAX_TABLE_ROWS]):
        css = f' class="{esc(classes[i])}"' if classes and classes[i] else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>")
    more = (f"<p class=note>{len(rows) - MAX_TABLE_ROWS} more rows left out (see summary.json).</p>"
            if len(rows) > MAX_TABLE_ROWS else "")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def fmt(value: object, digits: int = 2) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return "" if value is None else str(value)


def headline(run: RunContents) -> list[tuple[str, object]]:
    s = run.summary
    if run.kind == "localize":
        return [("dataset", s.get("dataset")), ("queries", s.get("num_queries")),
                ("localized", s.get("num_localized")), ("failures", len(s.get("failures") or {})),
                ("3D points", run.model.num_points3D() if run.model is not None else "none (cutouts)")]
    return [("status", str(s.get("status", "?")).upper()),
            ("registered", f"{s.get('num_registered', '?')} / {s.get('num_images', '?')}"),
            ("3D points", s.get("num_points3D")), ("observations", s.get("num_observations")),
            ("mean track length", fmt(s.get("mean_track_length"))),
            ("mean reprojection error (px)", fmt(s.get("mean_reprojection_error")))]


def warnings_section(run: RunContents) -> str:
    s = run.summary
    items = [str(w) for w in s.get("warnings") or []]
    items += [f"unreadable image {n}: {r}" for n, r in sorted((s.get("failed_images") or {}).items())]
    items += [f"suspect features in {n}: {r}" for n, r in sorted((s.get("feature_warnings") or {}).items())]
    if run.kind == "localize":
        items += [f"query {n} not localized: {r}" for n, r in sorted((s.get("failures") or {}).items())]
    if s.get("unregistered"):
        items.append(f"not registered: {', '.join(map(str, s['unregistered']))}")
    if not items:
        return "<section><h2>Reliability</h2><p class=ok>No warnings.</p></section>"
    return ("<section><h2>Reliability warnings</h2><ul class=warnings>"
            + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul></section>")


def queries_section(run: RunContents) -> str:
    queries = queries_of(run)
    if not queries:
        return ""
    evaluation = run.summary.get("evaluation") or {}
    errors = evaluation.get("errors") or {} if isinstance(evaluation, dict) else {}
    counts, _ = keypoint_counts_and_sizes(run.features, [str(q["name"]) for q in queries])
    rows, classes = [], []
    for q in queries:
        error = errors.get(results_name(str(q["name"]))) or {}
        rows.append([q["name"], "yes" if q.get("cam_from_world") else "no", counts.get(q["name"], ""),
                     q.get("num_inliers", ""), q.get("num_correspondences", ""), q.get("num_retrieved", ""),
                     fmt(error.get("position"), 3), fmt(error.get("rotation_deg"), 2), q.get("failure") or ""])
        classes.append("" if q.get("cam_from_world") else "bad")
    recall = ""
    if isinstance(evaluation, dict) and evaluation.get("groups"):
        thresholds = " / ".join(f"({m:g} m, {d:g}°)" for m, d in evaluation.get("thresholds", []))
        recall = table(["group", "queries", f"recall at {thresholds}", "median position error",
                        "median rotation error (°)"],
                       [[g, v.get("num_queries"), " / ".join(f"{100 * r:.1f}%" for r in v.get("recall", [])),
                         fmt(v.get("median_position_error"), 3), fmt(v.get("median_rotation_error_deg"), 2)]
                        for g, v in evaluation["groups"].items()])
    return ("<section><h2>Queries</h2>" + recall
            + table(["query", "localized", "keypoints", "inliers", "2D-3D matches", "retrieved",
                     "position error", "rotation error (°)", "failure"], rows, classes) + "</section>")


def images_section(run: RunContents) -> str:
    rows = image_rows(run)
    if not rows or run.kind == "localize":
        if rows:
            total = sum(r["keypoints"] for r in rows)
            return (f"<section><h2>Images</h2><p>{len(rows)} images with features, {total} keypoints "
                    f"(mean {total / len(rows):.0f} per image).</p></section>")
        return ""
    return ("<section><h2>Images</h2>"
            + table(["image", "registered", "camera", "keypoints", "3D points observed", "kept pairs", "problem"],
                    [[r["name"], "yes" if r["registered"] else "no", r["camera"], r["keypoints"], r["points3D"],
                      r["pairs"], r["problem"]] for r in rows],
                    ["" if r["registered"] and not r["problem"] else "bad" for r in rows]) + "</section>")


def plots_section(plots: list[dict]) -> str:
    if not plots:
        return ""
    figures = "".join(f'<figure><img alt="{esc(p["caption"])}" src="{p["src"]}"><figcaption>{esc(p["caption"])}'
                      "</figcaption></figure>" for p in plots)
    return ("<section><h2>Matches</h2><p class=note>Green: verified inliers; red: other raw matches.</p>"
            + figures + "</section>")


def timings_section(run: RunContents) -> str:
    timings = run.summary.get("timings") or run.summary.get("timings_s") or {}
    if not isinstance(timings, dict) or not timings:
        return ""
    return ("<section><h2>Timings</h2>"
            + table(["step", "seconds"], [[k, fmt(v, 1) if isinstance(v, (int, float)) else v]
                                          for k, v in timings.items()]) + "</section>")


def settings_section(run: RunContents) -> str:
    s = run.summary
    keys = ("weights", "settings", "versions", "ground_truth", "stability", "pairs", "cameras", "results", "root")
    shown = {k: s[k] for k in keys if k in s}
    if not shown:
        return ""
    return ("<section><h2>Settings</h2><details><summary>weights, settings, versions (from summary.json)"
            f"</summary><pre>{esc(json.dumps(shown, indent=1, default=str))}</pre></details></section>")


ERROR_CATCHER = """<script>
(function(){var log=[];function show(m){log.push(String(m));var e=document.getElementById("d2sfm-errors");
if(e){e.textContent=log.join("\\n");e.hidden=false;}}window.d2sfmErrors=log;
window.addEventListener("error",function(ev){show("error: "+ev.message+" ("+(ev.lineno||"?")+")");});
var original=console.error;console.error=function(){show("console.error: "+Array.prototype.join.call(arguments," "));
if(original){original.apply(console,arguments);}};})();
</script>"""

STYLE = """<style>
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#1d1f23;background:#f6f7f9}
header{padding:14px 22px;background:#1d1f23;color:#fff}header h1{margin:0;font-size:19px}
header .sub{color:#aab;font-size:12px}main{padding:0 22px 40px}section{margin:18px 0}
h2{font-size:16px;margin:0 0 8px}.stats{display:flex;flex-wrap:wrap;gap:8px;margin-top:10px}
.stat{background:#2c2f36;border-radius:6px;padding:6px 10px}.stat b{display:block;font-size:16px}
#d2sfm-view{width:100%;height:520px;display:block;background:#14161a;border-radius:6px;cursor:grab}
.controls{margin:6px 0;font-size:12px;color:#555}.legend span{margin-right:12px}
table{border-collapse:collapse;background:#fff;font-size:12.5px}td,th{border:1px solid #dde;padding:3px 7px;text-align:left}
tr.bad td{background:#fff1f0}ul.warnings li{color:#a4260b;margin:3px 0}.ok{color:#1d7a2f}.note{color:#666;font-size:12px}
figure{margin:10px 0}figure img{max-width:100%;border-radius:4px}figcaption{font-size:12px;color:#444}
pre{background:#fff;border:1px solid #dde;padding:8px;overflow:auto;max-height:420px;font-size:12px}
#d2sfm-errors{color:#a4260b;border-color:#e8a}
</style>"""


def render_html(run: RunContents, scene: dict | None, plots: list[dict]) -> str:
    viewer = (ASSETS / "viewer.js").read_text(encoding="utf-8")
    stats = "".join(f"<div class=stat>{esc(k)}<b>{esc(v)}</b></div>" for k, v in headline(run) if v is not None)
    if scene is not None:
        shown, total = len(scene["points"]["xyz"]) // 3, scene["points"]["total"]
        view = (f"<section><h2>3D view</h2><canvas id=d2sfm-view></canvas><div class=controls>"
                "drag: rotate · shift-drag or right-drag: pan · wheel: zoom · "
                "<button id=d2sfm-reset type=button>reset view</button> "
                "<label><input id=d2sfm-cameras type=checkbox checked> cameras</label> · "
                f"{shown} of {total} points shown · <span class=legend><span style='color:#ff5a4e'>■ registered"
                "</span><span style='color:#4ec3ff'>■ localized query</span></span></div></section>")
        data = f'<script type="application/json" id="d2sfm-data">{json_for_script(scene)}</script>'
    else:
        view, data = "<section><h2>3D view</h2><p class=note>No model to show.</p></section>", ""
    notes = "".join(f"<li>{esc(n)}</li>" for n in run.notes)
    title = f"d2_sfm {run.kind}: {run.root.resolve().name}"
    return "\n".join([
        "<!DOCTYPE html>", "<html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width, initial-scale=1'>",
        f"<title>{esc(title)}</title>", STYLE, ERROR_CATCHER, "</head><body>",
        f"<header><h1>{esc(title)}</h1><div class=sub>{esc(run.root.resolve())}</div>"
        f"<div class=stats>{stats}</div></header><main>",
        "<pre id=d2sfm-errors hidden></pre>",
        view, warnings_section(run), queries_section(run), images_section(run), plots_section(plots),
        timings_section(run), settings_section(run),
        f"<section><h2>Left out</h2><ul>{notes}</ul></section>" if notes else "",
        "</main>", data, f"<script>{viewer}</script>", "</body></html>", ""])


def write_report_or_warn(out_dir: Path) -> Path | None:
    """`write_report` for the end of a run: a failure to write the page is a warning, never a
    failed run. Returns the page, or None."""
    try:
        return write_report(out_dir)
    except (D2SfmError, OSError, ValueError) as error:
        logger.warning("report.html not written in %s: %s", out_dir, error)
        return None


def write_report(out_dir: Path, output: Path | None = None, max_points: int = MAX_POINTS) -> Path:
    """Write `out_dir/report.html` (or `output`) for a reconstruct or localize output folder."""
    run = load_run(out_dir)
    scene = scene_data(run, max_points)
    plots = match_plots(run)
    page = render_html(run, scene, plots)
    output = Path(output) if output is not None else Path(out_dir) / REPORT_NAME
    partial = output.with_name(output.name + ".partial")
    partial.write_text(page, encoding="utf-8")
    partial.replace(output)
    logger.info("Wrote %s (%.0f kB)", output, output.stat().st_size / 1024)
    return output


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m d2_sfm.report", description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="reconstruct or localize output folder")
    parser.add_argument("--output", type=Path, help="HTML file to write (default: FOLDER/report.html)")
    parser.add_argument("--max-points", type=int, default=MAX_POINTS, help="3D points drawn at most (subsampled)")
    return parser


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_points < 0:
        raise ReportError("--max-points must be at least 0")
    path = write_report(args.folder, args.output, args.max_points)
    print(f"{path} ({path.stat().st_size / 1024:.0f} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(cli))
