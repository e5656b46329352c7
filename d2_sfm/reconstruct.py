"""Structure-from-Motion with D2-Net features, end to end; pycolmap does all the geometry.

python -m d2_sfm.reconstruct [--images DIR] --output OUT [--weights NAME|PATH] [--multiscale]
    [--max-edge N] [--pairs exhaustive|sequential|retrieval] [--pairs-file FILE] [--num-matched K]
    [--camera-mode auto|single|per_image|per_folder] [--camera-params fx,fy,cx,cy] [--overwrite]

Steps (each skipped when its outputs are complete and were made with the same settings, so an
interrupted or repeated run resumes where it stopped; `OUT/steps.json` records them):
  extract   OUT/features.h5     D2-Net keypoints and descriptors (hloc format)
  pairs     OUT/pairs.txt       image pairs to match (hloc format)
  match     OUT/matches.h5      mutual nearest neighbours (hloc format, int32 indices)
  database  OUT/database.db     COLMAP database: cameras, images, keypoints (+0.5 px), raw matches;
  verify                        two-view geometries by pycolmap, weak pairs removed
                                (per-pair numbers in OUT/database.pairs.json)
  map       OUT/sfm/            best model of pycolmap's incremental mapping (COLMAP binary),
            OUT/points.ply, OUT/summary.json, OUT/overview.png (top view); COLMAP's log: OUT/colmap.log

Without --images the embedded sample scene is generated (once) under datasets/sample_scene and
reconstructed, and the camera poses are compared with the known ones after a Sim3 alignment.

A model is flagged UNRELIABLE (status in summary.json, exit code 3) when an image's registration
rests only on weak pairs, when it observes few 3D points, when a focal length left its prior, or
when mapping again from other initial pairs changes the poses (stability check): D2 features on
symmetric, weakly textured objects produce confident but wrong pairs and ill-determined poses.
Exit codes: 0 model built, 2 nothing could be built (message says why), 3 model flagged unreliable.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import scipy.sparse
import torch
from scipy.sparse.csgraph import connected_components
from tqdm import tqdm

from .colmap import pycolmap
from .fingerprint import file_fingerprint, settings_fingerprint
from . import colmap_db, extract, match, pairs
from .atomic import write_json
from .colmap_log import colmap_log_to
from .colmap_readonly import read_cameras, read_image_ids
from .alignment import PoseErrors, align_and_compare, model_poses, read_ground_truth_file, relative_rotation_errors
from .cli import add_extraction_arguments, extraction_config_from_args, run_cli
from .colmap_db import CameraConfig, PairStats, VerificationConfig
from .errors import D2SfmError, check_options
from .extractor import D2Extractor, ExtractionConfig
from .h5io import feature_records, list_h5_names
from .locking import output_lock
from .paths import check_pair_key_collisions, resolve_inside
from .weights import resolve as resolve_weights
from .images import ImageListing, list_images, list_images_report, read_image_header
from .matching import MatcherConfig
from .pairs import PairsConfig
from .report import write_report_or_warn
from .formats_d2net import IMPORTED_WEIGHTS, d2net_path, import_d2net_npz
from .visualize import save_overview

logger = logging.getLogger(__name__)

STEPS = ("extract", "pairs", "match", "database", "map")
SAMPLE_SCENE_DIR = Path("datasets/sample_scene")
EXIT_UNRELIABLE = 3
RADIAL_MODELS = ("SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV")  # first extra parameter is k1


class ReconstructionError(D2SfmError, RuntimeError):
    """Nothing (or nothing usable) could be reconstructed; the message says why and what to try."""


@dataclass(frozen=True)
class MapperConfig:
    """pycolmap incremental mapping (IncrementalPipelineOptions); None keeps pycolmap's default."""
    min_num_matches: int = 15  # verified inliers for a pair to enter the correspondence graph
    init_min_num_inliers: int = 100  # initial pair
    abs_pose_min_num_inliers: int = 30  # registering a new image
    refine_known_intrinsics: bool = False  # known intrinsics (--camera-params) stay fixed by default
    multiple_models: bool = True
    random_seed: int = 0
    # Bundle adjustment threads. 1 makes mapping repeatable: with several threads, mapping the same
    # database gave 295 or 298 points from run to run (Ceres's parallel reductions), so a resumed run
    # could differ from an uninterrupted one. -1: all cores, faster, not bit-repeatable.
    num_threads: int = 1

    def __post_init__(self) -> None:
        check_options("mapper", num_threads=self.num_threads == 0 or self.num_threads < -1,
                      min_num_matches=self.min_num_matches < 1, init_min_num_inliers=self.init_min_num_inliers < 1,
                      abs_pose_min_num_inliers=self.abs_pose_min_num_inliers < 1)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class ReliabilityConfig:
    """When a registered image, or the whole model, is flagged as resting on weak evidence."""
    strong_pair_inliers: int = 75  # images outside the largest group linked by pairs this strong are weak
    min_image_points3D: int = 30  # and observe this many 3D points (COLMAP registers with 30 inliers)
    max_focal_change: float = 1.5  # refined / EXIF prior focal outside [1/x, x] -> flagged
    max_focal_change_without_prior: float = 1.6  # same against pycolmap's default 1.2 * max(W, H)
    max_radial_distortion: float = 0.5  # |k1| above this (normalised coordinates) is implausible
    # Stability: map again from other strong initial pairs and compare relative rotations. D2 on the
    # temple gave 1.8-5 deg median (5-12 deg max) disagreement between such runs, kermit <= 1.2 (max 3),
    # the sample scene < 0.1: a model that moves this much with its starting pair is not trustworthy.
    stability_runs: int = 2  # extra mapping runs (0: off)
    stability_max_images: int = 150  # skip the check on larger sets (it multiplies the mapping time)
    max_stability_median_deg: float = 2.5
    max_stability_deg: float = 6.0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class ReconstructionConfig:
    weights: str | None = None  # see d2_sfm.weights; None: d2_tf if available, else hed_vgg16
    extraction: ExtractionConfig = ExtractionConfig()
    pairs: PairsConfig = PairsConfig()
    pairs_file: Path | None = None  # pairs mode "file": the user's pairs file
    matcher: MatcherConfig = MatcherConfig()
    camera: CameraConfig = CameraConfig()
    verification: VerificationConfig = VerificationConfig()
    mapper: MapperConfig = MapperConfig()
    reliability: ReliabilityConfig = ReliabilityConfig()
    device: str = "cpu"
    import_d2net: bool = False  # features from the official <image>.d2-net files next to the images

    def settings(self) -> dict[str, object]:
        return {"weights": self.weights, "import_d2net": self.import_d2net,
                "extraction": self.extraction.as_attributes(),
                "pairs": self.pairs.as_dict(), "pairs_file": str(self.pairs_file) if self.pairs_file else None,
                "matcher": asdict(self.matcher), "camera": self.camera.as_dict(),
                "verification": self.verification.as_dict(), "mapper": self.mapper.as_dict(),
                "reliability": self.reliability.as_dict(), "device": self.device}


@dataclass(frozen=True)
class OutputLayout:
    root: Path

    features = property(lambda self: self.root / "features.h5")
    global_features = property(lambda self: self.root / "global_features.h5")
    pairs = property(lambda self: self.root / "pairs.txt")
    matches = property(lambda self: self.root / "matches.h5")
    database = property(lambda self: self.root / "database.db")
    pair_stats = property(lambda self: colmap_db.pair_stats_path(self.root / "database.db"))
    models = property(lambda self: self.root / "models")
    sfm = property(lambda self: self.root / "sfm")
    ply = property(lambda self: self.root / "points.ply")
    summary = property(lambda self: self.root / "summary.json")
    overview = property(lambda self: self.root / "overview.png")
    report = property(lambda self: self.root / "report.html")
    steps = property(lambda self: self.root / "steps.json")
    log = property(lambda self: self.root / "colmap.log")

    def outputs_of(self, step: str) -> list[Path]:
        return {"extract": [self.features], "pairs": [self.pairs], "match": [self.matches],
                "database": [self.database, self.pair_stats],
                "map": [self.sfm, self.ply, self.summary, self.overview]}[step]

    def all_files(self) -> list[Path]:
        """Everything this pipeline writes (and --overwrite removes); nothing else in OUT is touched."""
        files = [self.features, self.global_features, self.pairs, self.matches, self.database, self.pair_stats,
                 self.models, self.root / "models_check", self.sfm, self.ply, self.summary, self.overview,
                 self.report, self.steps, self.log]
        return files + [f.with_name(f.name + ".partial") for f in files]


# ----------------------------------------------------------------------------------------------
# Step bookkeeping


class StepLog:
    """OUT/steps.json: per step its settings fingerprint, whether it completed, timings, notes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.entries: dict[str, dict] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except (OSError, ValueError):
            logger.warning("Ignoring unreadable %s: every step runs again", self.path)
            self.entries = {}

    def is_complete(self, step: str, key: str, outputs: list[Path]) -> bool:
        entry = self.entries.get(step, {})
        return entry.get("fingerprint") == key and entry.get("complete", False) and all(p.exists() for p in outputs)

    def same_settings(self, step: str, key: str) -> bool:
        return self.entries.get(step, {}).get("fingerprint") == key

    def start(self, step: str, key: str) -> None:
        self.entries[step] = {"fingerprint": key, "complete": False}
        self.save()

    def finish(self, step: str, timings: dict[str, float], **notes: object) -> None:
        self.entries[step].update(complete=True, timings=timings, **notes)
        self.save()

    def get(self, step: str, item: str, default=None):
        return self.entries.get(step, {}).get(item, default)

    def save(self) -> None:
        write_json(self.path, self.entries)


# ----------------------------------------------------------------------------------------------
# Mapping and model assessment


def mapper_options(config: MapperConfig, known_camera_ids: list[int]) -> pycolmap.IncrementalPipelineOptions:
    options = pycolmap.IncrementalPipelineOptions()
    options.min_num_matches = config.min_num_matches
    options.multiple_models = config.multiple_models
    options.random_seed = config.random_seed
    options.num_threads = config.num_threads
    options.mapper.init_min_num_inliers = config.init_min_num_inliers
    options.mapper.abs_pose_min_num_inliers = config.abs_pose_min_num_inliers
    if known_camera_ids and not config.refine_known_intrinsics:
        options.constant_cameras = set(known_camera_ids)
    return options


def incremental_mapping(database: Path, image_dir: Path, models_dir: Path, num_images: int,
                        options: pycolmap.IncrementalPipelineOptions) -> dict[int, pycolmap.Reconstruction]:
    """pycolmap's incremental mapper with a progress bar of registered images."""
    if models_dir.exists():
        shutil.rmtree(models_dir)
    models_dir.mkdir(parents=True)
    progress = tqdm(total=num_images, desc="map", unit="img")
    try:
        return pycolmap.incremental_mapping(str(database), str(image_dir), str(models_dir), options,
                                            initial_image_pair_callback=lambda: progress.update(2),
                                            next_image_callback=lambda: progress.update(1))
    finally:
        progress.close()


def best_model(models: dict[int, pycolmap.Reconstruction]) -> pycolmap.Reconstruction | None:
    if not models:
        return None
    return max(models.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()))


@dataclass
class Assessment:
    status: str = "ok"  # ok | partial (not every image registered) | unreliable
    warnings: list[str] = field(default_factory=list)
    weak_images: dict[str, str] = field(default_factory=dict)  # name -> why its registration is weak


def assess_model(reconstruction: pycolmap.Reconstruction, pair_stats: list[PairStats],
                 camera_sources: dict[str, str], initial_cameras: dict[int, pycolmap.Camera],
                 num_images: int, config: ReliabilityConfig) -> Assessment:
    """Flag registrations that rest on weak evidence, and implausible focal lengths."""
    assessment = Assessment()
    registered = {im.name: im for im in reconstruction.images.values() if im.has_pose}
    core = strongly_connected_core(sorted(registered), colmap_db.verified_graph(pair_stats),
                                   config.strong_pair_inliers)
    for name, image in registered.items():
        if name not in core:
            assessment.weak_images[name] = (f"linked to the main group of {len(core)} images only through verified "
                                            f"pairs with fewer than {config.strong_pair_inliers} inliers"
                                            if core else f"no verified pair with {config.strong_pair_inliers}+ "
                                            "inliers to another registered image")
        elif image.num_points3D < config.min_image_points3D:
            assessment.weak_images[name] = f"observes {image.num_points3D} 3D points (< {config.min_image_points3D})"
    for camera_id, camera in reconstruction.cameras.items():
        names = sorted(n for n, im in registered.items() if im.camera_id == camera_id)
        if names:
            assessment.warnings += camera_warnings(camera, initial_cameras.get(camera_id),
                                                   camera_sources.get(names[0], "default"), names, config)
    by_reason: dict[str, list[str]] = {}
    for name, reason in sorted(assessment.weak_images.items()):
        by_reason.setdefault(reason, []).append(name)
    for reason, names in by_reason.items():
        assessment.warnings.append(f"{len(names)} registered image(s) rest on weak evidence ({reason}): "
                                   + ", ".join(names))
    if assessment.warnings:
        assessment.status = "unreliable"
    elif len(registered) < num_images:
        assessment.status = "partial"
    return assessment


def strongly_connected_core(names: list[str], graph: dict[str, dict[str, int]], min_inliers: int) -> set[str]:
    """Largest group of `names` connected by pairs with at least `min_inliers` verified inliers.

    Images outside it were registered through weak pairs only: on repetitive or symmetric objects
    those are exactly the confident false pairs (e.g. temple views 100-170 degrees apart with 50 inliers).
    Empty when no two images are so connected; among equally large groups, the one holding the
    alphabetically first name.
    """
    order = sorted(set(names))
    if not order:
        return set()
    index = {name: i for i, name in enumerate(order)}
    edges = [(index[name], index[other]) for name in order for other, inliers in graph.get(name, {}).items()
             if other in index and inliers >= min_inliers]
    rows, cols = (list(ends) for ends in zip(*edges)) if edges else ([], [])
    adjacency = scipy.sparse.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(order), len(order)))
    count, labels = connected_components(adjacency, directed=False)
    sizes = np.bincount(labels, minlength=count)
    # Ties between largest groups: the one holding the alphabetically first name, whatever the labelling.
    first = np.full(count, len(order))
    np.minimum.at(first, labels, np.arange(len(order)))
    largest = np.flatnonzero(sizes == sizes.max())
    best = largest[np.argmin(first[largest])]
    return {order[i] for i in np.flatnonzero(labels == best)} if sizes[best] > 1 else set()


def stability_pairs(reconstruction: pycolmap.Reconstruction, pair_stats: list[PairStats], count: int,
                    min_inliers: int) -> list[PairStats]:
    """Disjoint strong two-view pairs of registered images to restart the mapper from, skipping the
    strongest (the mapper's own start is usually near it) and pure rotations."""
    registered = set(model_poses(reconstruction))
    chosen, used = [], set()
    for stat in sorted(pair_stats, key=lambda s: -s.num_inliers):
        if (stat.kept and stat.num_inliers >= min_inliers and {stat.name0, stat.name1} <= registered
                and stat.configuration in ("CALIBRATED", "UNCALIBRATED") and not {stat.name0, stat.name1} & used):
            chosen.append(stat)
            used |= {stat.name0, stat.name1}
    return chosen[1:count + 1]


def stability_check(database: Path, image_dir: Path, work_dir: Path, reconstruction: pycolmap.Reconstruction,
                    pair_stats: list[PairStats], options: pycolmap.IncrementalPipelineOptions,
                    config: ReliabilityConfig) -> list[dict[str, object]]:
    """Map again from other initial pairs; relative-rotation disagreement with `reconstruction`."""
    image_ids = {name: image_id for name, (image_id, _) in read_image_ids(database).items()}
    reference, results = model_poses(reconstruction), []
    for stat in stability_pairs(reconstruction, pair_stats, config.stability_runs, config.strong_pair_inliers):
        options.init_image_id1, options.init_image_id2 = image_ids[stat.name0], image_ids[stat.name1]
        options.multiple_models = False
        shutil.rmtree(work_dir, ignore_errors=True)
        work_dir.mkdir(parents=True)
        try:
            other = best_model(pycolmap.incremental_mapping(str(database), str(image_dir), str(work_dir), options))
        except (ValueError, RuntimeError) as error:
            logger.warning("Stability run from (%s, %s) failed: %s", stat.name0, stat.name1, error)
            other = None
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
        errors = relative_rotation_errors(model_poses(other), reference) if other else np.zeros(0)
        results.append({"initial_pair": [stat.name0, stat.name1],
                        "num_registered": other.num_reg_images() if other else 0,
                        "num_common_pairs": int(len(errors)),
                        "median_deg": float(np.median(errors)) if len(errors) else None,
                        "max_deg": float(errors.max()) if len(errors) else None})
    return results


def stability_warnings(results: list[dict[str, object]], config: ReliabilityConfig) -> list[str]:
    warnings = []
    for run in results:
        if run["median_deg"] is None or run["num_common_pairs"] < 3:
            continue
        if run["median_deg"] > config.max_stability_median_deg or run["max_deg"] > config.max_stability_deg:
            warnings.append(f"unstable: mapping again from the pair {tuple(run['initial_pair'])} changes relative "
                            f"rotations by {run['median_deg']:.1f} deg median, {run['max_deg']:.1f} deg max "
                            f"(limits {config.max_stability_median_deg}, {config.max_stability_deg}): the poses are "
                            "not determined by the matches")
    return warnings


def camera_warnings(camera: pycolmap.Camera, prior: pycolmap.Camera | None, source: str, names: list[str],
                    config: ReliabilityConfig) -> list[str]:
    """Intrinsics that self-calibration pushed to implausible values (a known symptom of wrong models)."""
    warnings = []
    label = f"camera {camera.camera_id} ({names[0]}{', ...' if len(names) > 1 else ''})"
    if prior is not None and source != "known":
        change = camera.mean_focal_length() / prior.mean_focal_length()
        limit = config.max_focal_change if source == "exif" else config.max_focal_change_without_prior
        if not 1 / limit <= change <= limit:
            what = "its EXIF prior" if source == "exif" else "pycolmap's default guess (no EXIF focal)"
            warnings.append(f"{label}: focal length {camera.mean_focal_length():.0f} px moved x{change:.2f} from "
                            f"{what} {prior.mean_focal_length():.0f} px; self-calibration is unreliable here: give "
                            "--camera-params or --intrinsics")
    extra = [camera.params[i] for i in camera.extra_params_idxs()]
    if camera.model.name in RADIAL_MODELS and abs(extra[0]) > config.max_radial_distortion:
        warnings.append(f"{label}: radial distortion {extra[0]:.2f} is implausible")
    return warnings


def initial_cameras(database: Path) -> dict[int, pycolmap.Camera]:
    """The database's cameras before mapping: the priors that assess_model compares with (read
    without modifying the database)."""
    return read_cameras(database)


def model_statistics(reconstruction: pycolmap.Reconstruction) -> dict[str, object]:
    registered = sorted(im.name for im in reconstruction.images.values() if im.has_pose)
    return {
        "num_registered": len(registered),
        "num_points3D": reconstruction.num_points3D(),
        "num_observations": reconstruction.compute_num_observations(),
        "mean_track_length": reconstruction.compute_mean_track_length(),
        "mean_observations_per_image": reconstruction.compute_mean_observations_per_reg_image(),
        "mean_reprojection_error": reconstruction.compute_mean_reprojection_error(),
        "registered": registered,
        "cameras": [{"camera_id": cid, "model": cam.model.name, "width": cam.width, "height": cam.height,
                     "params": [float(v) for v in cam.params]} for cid, cam in reconstruction.cameras.items()],
    }


def ground_truth_report(reconstruction: pycolmap.Reconstruction, ground_truth: dict[str, pycolmap.Rigid3d]
                        ) -> tuple[dict[str, object], PoseErrors]:
    estimated = model_poses(reconstruction)
    errors = align_and_compare(estimated, ground_truth)
    relative = relative_rotation_errors(estimated, ground_truth)
    report = errors.as_dict()
    report["relative_rotation_error_deg"] = {
        "median": float(np.median(relative)) if len(relative) else None,
        "max": float(relative.max()) if len(relative) else None, "num_pairs": int(len(relative))}
    report["num_ground_truth"] = len(ground_truth)
    return report, errors


# ----------------------------------------------------------------------------------------------
# The pipeline


@dataclass
class ReconstructionSummary:
    output: Path
    data: dict[str, object]
    reconstruction: pycolmap.Reconstruction | None = None

    @property
    def status(self) -> str:
        return str(self.data.get("status"))

    def lines(self) -> list[str]:
        d = self.data
        lines = [f"{d['num_registered']}/{d['num_images']} images registered, {d['num_points3D']} points, "
                 f"mean track length {d['mean_track_length']:.2f}, mean reprojection error "
                 f"{d['mean_reprojection_error']:.2f} px -> {str(d['status']).upper()}"]
        lines += [f"  warning: {w}" for w in d.get("warnings", [])]
        if d.get("failed_images"):
            lines.append(f"  unreadable images skipped: {', '.join(sorted(d['failed_images']))}")
        if d.get("skipped_files"):
            lines.append(f"  files skipped when listing the folder: {', '.join(sorted(d['skipped_files']))}")
        if d.get("feature_warnings"):
            lines.append(f"  suspect features (see summary.json): {', '.join(sorted(d['feature_warnings']))}")
        if d.get("unregistered"):
            lines.append(f"  not registered: {', '.join(d['unregistered'])}")
        gt = d.get("ground_truth")
        if gt and gt.get("num_aligned"):
            lines.append(f"  pose error vs ground truth after Sim3 alignment ({gt['num_aligned']} views): rotation "
                         f"median {gt['rotation_error_deg']['median']:.2f} deg, "
                         f"max {gt['rotation_error_deg']['max']:.2f} "
                         f"deg; camera centre max {100 * gt['max_centre_error_fraction_of_scene']:.2f}% of scene size")
        if gt and gt.get("relative_rotation_error_deg", {}).get("num_pairs"):
            rel = gt["relative_rotation_error_deg"]
            lines.append(f"  relative rotation error vs ground truth ({rel['num_pairs']} pairs): median "
                         f"{rel['median']:.2f} deg, max {rel['max']:.2f} deg")
        timings = ", ".join(f"{k} {v:.1f} s" for k, v in d["timings"].items())
        lines.append(f"  timings: {timings}")
        lines.append(f"  outputs in {self.output}: sfm/ (COLMAP binary), points.ply, summary.json, overview.png")
        return lines


class Pipeline:
    """One reconstruction run in an output folder; `run()` chains the steps."""

    def __init__(self, image_dir: Path, output: Path, config: ReconstructionConfig,
                 image_list: list[str] | None = None, ground_truth: dict[str, pycolmap.Rigid3d] | None = None):
        self.image_dir, self.config = Path(image_dir), config
        self.out = OutputLayout(Path(output))
        self.image_list = image_list
        self.ground_truth = ground_truth
        self.log = StepLog(self.out.steps)
        self._extractor: D2Extractor | None = None
        self._listing: ImageListing | None = None
        self.names: list[str] = []
        self.timings: dict[str, float] = {}
        self.keys: dict[str, str] = {}

    def extractor(self) -> D2Extractor:
        if self._extractor is None:
            self._extractor = D2Extractor(self.config.weights, self.config.extraction, self.config.device)
        return self._extractor

    def run_step(self, step: str, key: str, body, index: int) -> None:
        self.keys[step] = key
        if self.log.is_complete(step, key, self.out.outputs_of(step)):
            logger.info("[%d/%d] %s: already done, skipped", index, len(STEPS), step)
        else:
            logger.info("[%d/%d] %s", index, len(STEPS), step)
            resume = self.log.same_settings(step, key)
            self.log.start(step, key)
            timings, notes = body(resume)
            self.log.finish(step, timings, **notes)
        self.timings.update(self.log.get(step, "timings", {}))

    # -- steps

    def listed_images(self) -> list[str]:
        if self.image_list:
            return sorted(self.image_list)
        if self._listing is None:
            self._listing = list_images_report(self.image_dir)
            self._listing.log()
        return sorted(self._listing.names)

    def extract(self, resume: bool) -> tuple[dict, dict]:
        if self.config.import_d2net:
            start = time.time()
            import_d2net_npz(self.image_dir, self.listed_images(), self.out.features, overwrite=True)
            return {"extract": time.time() - start}, {"failed": {}, "weights": {"name": IMPORTED_WEIGHTS, "sha256": ""}}
        # OUT/features.h5 is this pipeline's own file: other extraction settings redo it (extract.main
        # alone refuses to mix settings into a file it was not asked to overwrite)
        other_settings = not extract.has_settings(self.out.features, self.extractor())
        summary = extract.main(self.image_dir, self.out.features, self.listed_images(), self.config.weights,
                               self.config.extraction, overwrite=other_settings, device=self.config.device,
                               extractor=self.extractor())
        return {"extract": summary.seconds}, {"failed": summary.failed, "feature_warnings": summary.warnings,
                                              "weights": {"name": self.extractor().weights.name,
                                                          "sha256": self.extractor().weights.sha256}}

    def make_pairs(self, resume: bool) -> tuple[dict, dict]:
        start = time.time()
        extractor = self.extractor() if self.config.pairs.mode == "retrieval" else None
        pairs.main(self.out.pairs, self.names, self.config.pairs, self.image_dir, self.config.pairs_file,
                   self.out.global_features, extractor)
        return {"pairs": time.time() - start}, {}

    def match(self, resume: bool) -> tuple[dict, dict]:
        start = time.time()
        match.main(self.out.pairs, self.out.features, self.out.matches, self.config.matcher, self.config.device,
                   overwrite=not resume)
        return {"match": time.time() - start}, {}

    def database(self, resume: bool) -> tuple[dict, dict]:
        summary = colmap_db.main(self.out.database, self.image_dir, self.out.pairs, self.out.features,
                                 self.out.matches, self.config.camera, self.config.verification,
                                 -1)  # verification is repeatable with all cores (seeded RANSAC per pair)
        return summary.timings, {"camera_sources": summary.camera_sources, "known_camera_ids": summary.known_camera_ids}

    def map(self, resume: bool) -> tuple[dict, dict]:
        # the previous model goes first: a failed mapping must not leave it beside the new database
        for stale in (self.out.sfm, self.out.ply, self.out.summary, self.out.overview, self.out.report):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        start = time.time()
        stats = colmap_db.read_pair_stats(self.out.pair_stats)
        if not any(s.kept for s in stats):
            raise ReconstructionError(no_pairs_message(stats, self.out.pair_stats))
        options = mapper_options(self.config.mapper, self.log.get("database", "known_camera_ids", []))
        try:
            models = incremental_mapping(self.out.database, self.image_dir, self.out.models, len(self.names), options)
        except (ValueError, RuntimeError) as error:  # a failed COLMAP check surfaces as ValueError
            raise ReconstructionError(f"pycolmap's incremental mapping failed: {error} "
                                      f"(log: {self.out.log})") from error
        best = best_model(models)
        if best is None or best.num_reg_images() < 2:
            raise ReconstructionError(f"pycolmap's mapper found no initial pair among {sum(s.kept for s in stats)} "
                                      f"verified pairs (see {self.out.log}); more overlap between images, more "
                                      "images, or --multiscale may help")
        self.out.sfm.mkdir(parents=True)
        best.write(str(self.out.sfm))
        best.export_PLY(str(self.out.ply))
        if len(models) == 1:
            shutil.rmtree(self.out.models, ignore_errors=True)
        save_overview(best, self.out.overview)
        timings = {"map": time.time() - start}
        stability = []
        reliability = self.config.reliability
        if reliability.stability_runs and len(self.names) <= reliability.stability_max_images:
            start = time.time()
            stability = stability_check(self.out.database, self.image_dir, self.out.root / "models_check", best,
                                        stats, options, reliability)
            timings["stability"] = time.time() - start
        return timings, {"num_models": len(models), "stability": stability}

    # -- the chain

    def run(self) -> ReconstructionSummary:
        with colmap_log_to(self.out.log):
            return self.run_steps()

    def run_steps(self) -> ReconstructionSummary:
        listed = self.listed_images()
        if len(listed) < 2:
            raise ReconstructionError(too_few_images_message(self.image_dir, listed, [], {}))
        config = self.config
        inputs = [d2net_path(self.image_dir, n) for n in listed] if config.import_d2net else listed
        self.run_step("extract", settings_fingerprint(
            "import .d2-net" if config.import_d2net else (config.weights, config.extraction.as_attributes()),
            image_files_key(self.image_dir, inputs)), self.extract, 1)
        failed = self.log.get("extract", "failed", {})
        available = set(list_h5_names(self.out.features))
        self.names = [n for n in listed if n in available]
        if len(self.names) < 2:
            raise ReconstructionError(too_few_images_message(self.image_dir, listed, self.names, failed))
        # Later steps depend on the features' content, not on image timestamps: an image that was
        # only touched keeps its features, and nothing downstream is redone.
        features = feature_records(self.out.features)
        self.run_step("pairs", settings_fingerprint(
            config.weights, config.extraction.as_attributes(), {n: features[n].identity for n in self.names},
            config.pairs.as_dict(), file_fingerprint(config.pairs_file)),
            self.make_pairs, 2)
        self.run_step("match", settings_fingerprint(
            self.keys["pairs"], file_fingerprint(self.out.pairs), asdict(config.matcher)),
            self.match, 3)
        self.run_step("database", settings_fingerprint(
            self.keys["match"], config.camera.as_dict(), file_fingerprint(config.camera.intrinsics_file),
            config.verification.as_dict()),
            self.database, 4)
        self.run_step("map", settings_fingerprint(
            self.keys["database"], config.mapper.as_dict(), config.reliability.as_dict(),
            sorted(self.ground_truth) if self.ground_truth else None),
            self.map, 5)
        return self.summarise(listed, failed)

    def summarise(self, listed: list[str], failed: dict[str, str]) -> ReconstructionSummary:
        reconstruction = pycolmap.Reconstruction(str(self.out.sfm))
        stats = colmap_db.read_pair_stats(self.out.pair_stats)
        assessment = assess_model(reconstruction, stats, self.log.get("database", "camera_sources", {}),
                                  initial_cameras(self.out.database), len(listed), self.config.reliability)
        data: dict[str, object] = {"status": assessment.status, "images": str(self.image_dir),
                                   "num_images": len(listed), "num_with_features": len(self.names)}
        data.update(model_statistics(reconstruction))
        registered = set(data["registered"])
        data["unregistered"] = [n for n in listed if n not in registered]
        data["failed_images"] = failed
        data["feature_warnings"] = self.log.get("extract", "feature_warnings", {})
        data["skipped_files"] = self._listing.skipped if self._listing else {}
        stability = self.log.get("map", "stability", [])
        data["stability"] = stability
        unstable = stability_warnings(stability, self.config.reliability)
        if unstable:
            assessment.status = "unreliable"
        data["status"] = assessment.status
        data["warnings"] = assessment.warnings + unstable
        data["weak_images"] = assessment.weak_images
        num_models = self.log.get("map", "num_models", 1)
        if num_models > 1:
            data["warnings"].append(f"the images formed {num_models} separate models; the largest is in sfm/, "
                                    f"all of them in {self.out.models}")
        data["pairs"] = {"matched": len(stats), "verified": sum(s.num_inliers > 0 for s in stats),
                         "kept": sum(s.kept for s in stats),
                         "rejected_weak": sum(s.num_inliers > 0 and not s.kept for s in stats)}
        if self.ground_truth:
            data["ground_truth"], _ = ground_truth_report(reconstruction, self.ground_truth)
        data["timings"] = {**self.timings, "total": sum(self.timings.values())}
        data["weights"] = self.log.get("extract", "weights") or features_weights(self.out.features)
        data["settings"] = self.config.settings()
        data["versions"] = {"pycolmap": pycolmap.__version__, "torch": torch.__version__}
        write_json(self.out.summary, data)
        write_report_or_warn(self.out.root)
        return ReconstructionSummary(self.out.root, data, reconstruction)


def features_weights(features: Path) -> dict[str, str]:
    import h5py

    with h5py.File(features, "r") as f:
        return {"name": str(f.attrs.get("weights", "")), "sha256": str(f.attrs.get("weights_sha256", ""))}


def image_files_key(image_dir: Path, names: list[str]) -> list[tuple[str, int, int]]:
    """Names with size and modification time: a changed image invalidates the features."""
    key = []
    for name in names:
        try:
            stat = (Path(image_dir) / name).stat()
            key.append((name, stat.st_size, stat.st_mtime_ns))
        except OSError:
            key.append((name, -1, -1))
    return key


def too_few_images_message(image_dir: Path, listed: list[str], usable: list[str], failed: dict[str, str]) -> str:
    reasons = "; ".join(f"{n}: {r}" for n, r in sorted(failed.items()))
    if len(listed) < 2:
        return (f"{image_dir} holds a single image ({', '.join(listed)}); Structure-from-Motion needs at "
                "least 2 overlapping images")
    return f"only {len(usable)} of {len(listed)} images in {image_dir} could be read ({reasons}); at least 2 are needed"


def no_pairs_message(stats: list[PairStats], pair_stats: Path) -> str:
    best = max(stats, key=lambda s: s.num_inliers, default=None)
    detail = (f"; the best pair ({best.name0}, {best.name1}) has {best.num_matches} matches and {best.num_inliers} "
              f"verified inliers ({best.reason})" if best else "")
    return (f"no image pair survived geometric verification ({len(stats)} pairs tried{detail}): the images seem "
            f"to share no common view. Per-pair numbers: {pair_stats}")


def remove_outputs(layout: OutputLayout) -> None:
    for path in layout.all_files():
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def validate_inputs(image_dir: Path, output: Path, config: ReconstructionConfig,
                    image_list: list[str] | None) -> None:
    """Everything a run will read, checked before anything is deleted or computed: the output's
    place, the images, the weights, a pairs file (its names among the images), known intrinsics
    (their sizes those of the images)."""
    if Path(output).resolve().is_relative_to(Path(image_dir).resolve()):
        raise ReconstructionError(f"output {output} is inside the image folder {image_dir}: d2_sfm never writes "
                                  "into a user's image folder (and would read its own pictures as images); "
                                  "choose an output outside it")
    names = image_list or list_images(image_dir)
    check_pair_key_collisions(names, str(image_dir))
    if not config.import_d2net or config.pairs.mode == "retrieval":
        resolve_weights(config.weights, validate=True)
    if config.pairs_file is not None:
        pairs.validated_user_pairs(config.pairs_file, names)
    if config.camera.intrinsics_file is not None:
        check_intrinsics_sizes(config.camera.intrinsics_file, image_dir, names)


def check_intrinsics_sizes(intrinsics_file: Path, image_dir: Path, names: list[str]) -> None:
    """Each known camera must have the size of its image (read from the image's header)."""
    listed = set(names)
    for name, camera in colmap_db.read_intrinsics_file(intrinsics_file).items():
        if name in listed:
            header = read_image_header(resolve_inside(image_dir, name))
            if (camera.width, camera.height) != (header.width, header.height):
                raise ReconstructionError(f"{intrinsics_file}: {name} is {header.width}x{header.height}, "
                                          f"not {camera.width}x{camera.height}")


def main(image_dir: Path, output: Path, config: ReconstructionConfig = ReconstructionConfig(),
         overwrite: bool = False, image_list: list[str] | None = None,
         ground_truth: dict[str, pycolmap.Rigid3d] | None = None) -> ReconstructionSummary:
    """Reconstruct the images of `image_dir` into `output` (resumable; see the module docstring).
    One run at a time per output folder (a second gets OutputLockedError at once)."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ReconstructionError(f"output {output} exists and is not a folder")
    validate_inputs(image_dir, output, config, image_list)
    layout = OutputLayout(output)
    output.mkdir(parents=True, exist_ok=True)
    with output_lock(output / "reconstruct"):
        if overwrite:
            remove_outputs(layout)
        elif layout.steps.is_file():
            logger.info("Resuming in %s (finished steps with the same settings are skipped; --overwrite starts "
                        "afresh)", output)
        summary = Pipeline(image_dir, output, config, image_list, ground_truth).run()
    logger.info("Done: %s", summary.lines()[0])
    return summary


def sample_scene(root: Path = SAMPLE_SCENE_DIR) -> tuple[Path, dict[str, pycolmap.Rigid3d]]:
    """Generate the embedded sample scene if missing; its image folder and ground-truth poses."""
    from .datasets.sample_scene import GROUND_TRUTH_FILE, IMAGE_DIR, read_ground_truth, write_sample_scene

    write_sample_scene(root)
    views = read_ground_truth(Path(root) / GROUND_TRUTH_FILE)
    return Path(root) / IMAGE_DIR, {name: view.cam_from_world for name, view in views.items()}


# ----------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    default = ReconstructionConfig()
    parser = argparse.ArgumentParser(prog="python -m d2_sfm.reconstruct", description=__doc__.split("\n")[0],
                                     epilog="Exit codes: 0 model built, 2 nothing could be built, "
                                            "3 model flagged unreliable (see summary.json warnings).")
    parser.add_argument("--images", type=Path, help="image folder (recursive); default: the embedded sample "
                                                    f"scene, generated under {SAMPLE_SCENE_DIR}")
    parser.add_argument("--output", type=Path, help="output folder (default: outputs/<image folder name>)")
    parser.add_argument("--overwrite", action="store_true", help="remove this pipeline's files in OUT first")
    parser.add_argument("--ground-truth", type=Path, help="reference poses to compare with: ground_truth.txt "
                        "(name qw qx qy qz tx ty tz ...), Middlebury *_par.txt, or Bundler bundle.out")
    group = parser.add_argument_group("pairs")
    group.add_argument("--pairs", choices=("exhaustive", "sequential", "retrieval"), default=default.pairs.mode)
    group.add_argument("--pairs-file", type=Path, help="use this pairs file (hloc format) instead")
    group.add_argument("--num-matched", type=int, default=default.pairs.num_matched, help="retrieval: neighbours")
    group.add_argument("--window", type=int, default=default.pairs.window, help="sequential: neighbours")
    group = parser.add_argument_group("mapping")
    group.add_argument("--refine-known-intrinsics", action="store_true",
                       help="let bundle adjustment refine intrinsics given by --camera-params/--intrinsics")
    group.add_argument("--num-threads", type=int, default=default.mapper.num_threads,
                       help="bundle-adjustment threads of the mapper (1: repeatable results; -1: all cores)")
    parser.add_argument("--import-d2net", action="store_true",
                        help="use the official <image>.d2-net feature files next to the images (converted once "
                             "into OUT/features.h5) instead of extracting features")
    add_extraction_arguments(parser)
    colmap_db.add_camera_arguments(parser)
    colmap_db.add_verification_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> ReconstructionConfig:
    default = ReconstructionConfig()
    pairs_config = replace(default.pairs, mode="file" if args.pairs_file else args.pairs,
                           num_matched=args.num_matched, window=args.window)
    return ReconstructionConfig(
        weights=args.weights, extraction=extraction_config_from_args(args), pairs=pairs_config,
        pairs_file=args.pairs_file, camera=colmap_db.camera_config_from_args(args),
        verification=colmap_db.verification_config_from_args(args),
        mapper=replace(default.mapper, refine_known_intrinsics=args.refine_known_intrinsics,
                       num_threads=args.num_threads),
        device=args.device, import_d2net=args.import_d2net)


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    ground_truth = None
    image_dir = args.images
    if image_dir is None:
        image_dir, ground_truth = sample_scene()
        logger.info("No --images: reconstructing the embedded sample scene in %s", image_dir)
    if args.ground_truth:
        ground_truth = read_ground_truth_file(args.ground_truth, list_images(image_dir))
    output = args.output or Path("outputs") / Path(image_dir).resolve().name
    summary = main(image_dir, output, config, args.overwrite, ground_truth=ground_truth)
    print("\n".join(summary.lines()))
    return EXIT_UNRELIABLE if summary.status == "unreliable" else 0


if __name__ == "__main__":
    raise SystemExit(run_cli(cli))
