"""Pipeline: visual localization with D2-Net features on Aachen Day-Night (v1.0, v1.1) and InLoc.

python -m d2_sfm.localize --dataset aachen|aachen_v1_1|inloc|kapture [--root DIR] [--output OUT]
                          [--pairs FILE] [--num-retrieved K] [--num-covisible K]
                          [--covisibility-clustering] [--ransac-max-error PX] [--ground-truth FILE]
                          [--weights NAME|PATH] [--multiscale] [--max-edge N] ...

The recipe (each step resumable; rerunning continues where it stopped):
1. retrieval: `--pairs` (e.g. hloc's NetVLAD lists, `query db` per line, best first; the first K
   per query are used) or our own GeM global descriptor of D2-Net's dense map (`d2_sfm.pairs`);
2. D2 features of the database and query images (`d2_sfm.extract`; InLoc: only the retrieved
   cutouts);
3. 3D. Aachen: pair covisible database images (the reference model's points), match them, and
   triangulate D2 points with the reference poses held fixed (`d2_sfm.triangulate`). InLoc: the
   cutouts' XYZcut scans, nothing to build;
4. match each query with its retrieved database images (`d2_sfm.match`);
5. 2D-3D correspondences (Aachen: through the triangulated model, optionally per covisibility
   cluster; InLoc: through XYZcut) and pose by pycolmap with the query's known intrinsics
   (LO-RANSAC + refinement); then the results file (`name qw qx qy qz tx ty tz`, cam_from_world,
   one line per query, basenames, ready for visuallocalization.net) and summary.json; with ground
   truth (`--ground-truth`, or the synthetic datasets' `ground_truth/queries.txt`), the
   benchmark's recall at its thresholds.
Every input (dataset files, --pairs, --ground-truth) is parsed before any feature is computed; the
output folder is locked for the run (a concurrent run into it fails at once); the triangulated
model records the digests of the dataset files and database images it was built from, and every
pose the digests of its query image, intrinsics, retrieval list (and, InLoc, cutouts): a resume
redoes exactly what changed, saying so in one log line. COLMAP's log: OUT/colmap.log.
A query that cannot be localized still gets a line (Aachen: the pose of its best retrieved database
image, as hloc; InLoc: the identity), and is listed as a failure, with the reason, in summary.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import h5py
import numpy as np

from .colmap import pycolmap
from .fingerprint import file_fingerprint, settings_fingerprint
from . import extract, match, triangulate
from .cli import add_extraction_arguments, extraction_config_from_args, run_cli
from .atomic import write_json
from .colmap_log import colmap_log_to
from .report import write_report_or_warn
from .colmap_model import read_model
from .datasets import DatasetError
from .datasets.aachen import DATABASE_FILE, DB_INTRINSICS_FILE, IMAGE_DIR, MODEL_V1_1_DIR, NVM_FILE, AachenDataset
from .datasets.formats import (camera_to_fields, read_nvm, read_pairs as read_retrieval_pairs, read_poses,
                               write_pairs, write_poses)
from .datasets.inloc import CUTOUT_DIR, QUERY_DIR, InLocDataset, read_query_floors
from .errors import check_options
from .images import read_image_header
from .paths import resolve_inside
from .extractor import D2Extractor, ExtractionConfig
from .h5io import list_h5_names
from .localization import covisibility, evaluate, pose_from_cutouts, pose_from_model
from .localization.estimation import (LocalizationError, PoseEstimationConfig, QueryLog, QueryResult, Timer,
                                      results_name)
from .localization.inputs import StampCache, stat_stamp
from .localization.model import load_model
from .locking import output_lock
from .matching import MatcherConfig
from .pairs import PairsConfig, compute_global_features, read_global_descriptors

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetPreset:
    """Defaults of one benchmark dataset."""

    root: str  # default dataset folder
    results_prefix: str  # results file name starts with this (hloc: "Aachen", "Aachen-v1.1", "InLoc")
    num_retrieved: int  # database images per query (hloc: Aachen 50, InLoc 40)
    ransac_max_error: float  # px at `ransac_reference_edge` (hloc: localize_sfm 12, localize_inloc 48)
    ransac_reference_edge: int  # longest query side that error is meant for; scaled for other sizes
    thresholds: str  # key of evaluate.THRESHOLDS


PRESETS: dict[str, DatasetPreset] = {
    "aachen": DatasetPreset("datasets/aachen", "Aachen", 50, 12.0, 1600, "aachen"),
    "aachen_v1_1": DatasetPreset("datasets/aachen_v1.1", "Aachen-v1.1", 50, 12.0, 1600, "aachen"),
    "inloc": DatasetPreset("datasets/inloc", "InLoc", 40, 48.0, 4032, "inloc"),
    "kapture": DatasetPreset("datasets/kapture", "kapture", 50, 12.0, 1600, "aachen"),  # datasets/kapture_dataset.py
}
SYNTHETIC_GROUND_TRUTH = "ground_truth/queries.txt"  # written by d2_sfm.datasets.synthetic
SYNTHETIC_QUERY_FLOORS = "ground_truth/query_floors.txt"
STEP_STAMP = "d2_sfm_step.json"  # in the triangulated model's folder: the settings and inputs it was made with
# Where each benchmark comes from (printed when its folder is missing), and the synthetic stand-in.
DATASET_SOURCES = {
    "aachen": "Aachen Day-Night v1.0 from the benchmark's official site, visuallocalization.net",
    "aachen_v1_1": "Aachen Day-Night v1.1 from the benchmark's official site, visuallocalization.net",
    "inloc": "InLoc from the benchmark's official site, visuallocalization.net",
    "kapture": "a kapture localization dataset (mapping/ and query/ kapture folders, e.g. kapture's downloader)",
}


@dataclass(frozen=True)
class LocalizationConfig:
    """Settings of a localization run (written to summary.json)."""

    num_retrieved: int | None = None  # None: the dataset's default
    num_covisible: int = 20  # Aachen: database pairs per image for triangulation (hloc: 20)
    covisibility_clustering: bool = False  # Aachen: one pose per cluster of covisible db images
    ransac_max_error: float | None = None  # px; None: the dataset's default, scaled to the query size
    min_cutout_matches: int = 20  # InLoc: skip cutouts with fewer matches (hloc skip_matches)
    extraction: ExtractionConfig = field(default_factory=ExtractionConfig)
    matcher: MatcherConfig = field(default_factory=MatcherConfig)
    # GeM retrieval settings (image size, pooling); the number of neighbours is num_retrieved
    retrieval: PairsConfig = field(default_factory=lambda: PairsConfig(mode="retrieval"))

    def __post_init__(self) -> None:
        check_options("localization", num_retrieved=self.num_retrieved is not None and self.num_retrieved < 1,
                      num_covisible=self.num_covisible < 1, min_cutout_matches=self.min_cutout_matches < 0,
                      ransac_max_error=self.ransac_max_error is not None and not self.ransac_max_error > 0)

    def as_dict(self) -> dict[str, object]:
        return json.loads(json.dumps(asdict(self), default=str))


def ransac_threshold(preset: DatasetPreset, config: LocalizationConfig, camera: pycolmap.Camera) -> float:
    if config.ransac_max_error is not None:
        return config.ransac_max_error
    return preset.ransac_max_error * max(camera.width, camera.height) / preset.ransac_reference_edge


@dataclass
class RunPaths:
    """Files of a run under the output folder."""

    output: Path

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        self.features = self.output / "features.h5"
        self.global_features = self.output / "global-features.h5"
        self.db_pairs = self.output / "pairs-db-covis.txt"
        self.db_matches = self.output / "matches-db.h5"
        self.sfm = self.output / "sfm_d2"
        self.query_pairs = self.output / "pairs-query.txt"
        self.query_matches = self.output / "matches-query.h5"
        self.pose_log = self.output / "poses.jsonl"
        self.summary = self.output / "summary.json"
        self.colmap_log = self.output / "colmap.log"
        self.input_stamps = self.output / "input-stamps.json"  # FileStamps of dataset files and images


# ----------------------------------------------------------------------------------------------
# The two ways to get 3D: a triangulated model (Aachen) or cutout scans (InLoc)


class Scene(Protocol):
    """What the shared chain needs from a dataset."""

    preset: DatasetPreset
    image_dir: Path
    db_names: list[str]
    queries: dict[str, pycolmap.Camera]  # name (relative to image_dir) -> known intrinsics
    source_of_3d: str  # for the log

    def db_images_needed(self, retrieval: dict[str, list[str]]) -> list[str]: ...

    def prepare(self, paths: RunPaths, config: LocalizationConfig, timer: Timer, stamps: StampCache) -> None: ...

    def query_inputs(self, name: str, retrieved: list[str], stamps: StampCache) -> str: ...

    def localize(self, paths: RunPaths, retrieval: dict[str, list[str]], config: LocalizationConfig,
                 log: QueryLog) -> list[QueryResult]: ...

    def fallback_pose(self, result: QueryResult, retrieval: list[str]) -> pycolmap.Rigid3d: ...

    def evaluation_groups(self, retrieval: dict[str, list[str]]) -> dict[str, str]: ...


class AachenScene:
    """Aachen v1.0 / v1.1: D2 points triangulated in the dataset's reference poses."""

    def __init__(self, dataset: AachenDataset, preset: DatasetPreset):
        self.dataset = dataset
        self.preset = preset
        self.image_dir = dataset.image_dir
        self.db_names = dataset.db_names
        self.queries = {q.name: q.camera for q in dataset.queries}
        self.reference = dataset.reference_reconstruction()
        self.source_of_3d = "D2 points triangulated in the reference poses"

    def db_images_needed(self, retrieval: dict[str, list[str]]) -> list[str]:
        return self.db_names  # all of them make the triangulated model

    def evaluation_groups(self, retrieval: dict[str, list[str]]) -> dict[str, str]:
        return {q.basename: q.condition for q in self.dataset.queries}  # day / night

    def observations(self) -> covisibility.Observations:
        """Which database image sees which point, from the dataset's own (SIFT) model."""
        root = self.dataset.root
        if self.dataset.version == "v1_1":
            return covisibility.Observations.from_reconstruction(read_model(root / MODEL_V1_1_DIR, DatasetError))
        nvm = read_nvm(root / NVM_FILE)
        return covisibility.Observations([c.name for c in nvm.cameras], nvm.points.image_index,
                                         nvm.points.point_index)

    def dataset_files(self) -> list[Path]:
        """The files the reference poses and covisibility come from."""
        root = self.dataset.root
        if self.dataset.version == "v1_1":
            return sorted(p for p in (root / MODEL_V1_1_DIR).iterdir() if p.suffix in (".bin", ".txt"))
        return [p for p in (root / NVM_FILE, root / DB_INTRINSICS_FILE, root / DATABASE_FILE) if p.exists()]

    def prepare(self, paths: RunPaths, config: LocalizationConfig, timer: Timer, stamps: StampCache) -> None:
        """Covisible database pairs, their matches, and the triangulated model (skipped when a
        model made from the same dataset files, database images, features and settings is there)."""
        stamp = paths.sfm / STEP_STAMP
        parts = {
            "settings": settings_fingerprint(str(self.dataset.root), self.dataset.version, self.db_names,
                                             config.num_covisible, asdict(config.matcher),
                                             h5_attributes(paths.features)),
            "dataset files": settings_fingerprint(stamps.digests(self.dataset_files(), self.dataset.root)),
            "database images": settings_fingerprint(stamps.digests([self.image_dir / n for n in self.db_names],
                                                                   self.image_dir)),
        }
        key = settings_fingerprint(parts)
        previous = read_step_stamp(stamp)
        if previous.get("key") == key and (paths.sfm / "images.bin").is_file():
            logger.info("Triangulated model %s is up to date: skipped", paths.sfm)
            return
        if previous:
            changed = [name for name, value in parts.items() if previous.get("parts", {}).get(name) != value]
            logger.info("Triangulated model %s is out of date (%s changed): building it again", paths.sfm,
                        ", ".join(changed) or "its record")
        stamp.unlink(missing_ok=True)  # a run killed while rebuilding must not look finished
        with timer("db_pairs"):
            covisibility.main(self.reference, paths.db_pairs, config.num_covisible, self.observations())
        with timer("db_match"):
            match.main(paths.db_pairs, paths.features, paths.db_matches, config.matcher)
        with timer("triangulate"):
            triangulate.main(self.reference, self.image_dir, paths.db_pairs, paths.features, paths.db_matches,
                             paths.sfm, mapper_options=triangulation_options())
        write_json(stamp, {"key": key, "parts": parts})

    def query_inputs(self, name: str, retrieved: list[str], stamps: StampCache) -> str:
        """The query image, its intrinsics and retrieval list (the model is in the step settings)."""
        return settings_fingerprint(stamps.digest(self.image_dir / name), camera_to_fields(self.queries[name]),
                                    retrieved)

    def localize(self, paths: RunPaths, retrieval: dict[str, list[str]], config: LocalizationConfig,
                 log: QueryLog) -> list[QueryResult]:
        model = load_model(paths.sfm)
        results = []
        for threshold, queries in by_threshold(self.queries, self.preset, config).items():
            localizer_config = pose_from_model.ModelLocalizationConfig(
                PoseEstimationConfig(ransac_max_error=threshold), config.covisibility_clustering)
            results += pose_from_model.main(model, queries, retrieval, paths.features, paths.query_matches,
                                            localizer_config, log)
        return results

    def fallback_pose(self, result: QueryResult, retrieval: list[str]) -> pycolmap.Rigid3d:
        """The pose of the best retrieved database image (hloc's fallback), else the identity."""
        for name in retrieval:
            image = self.reference.find_image_with_name(name)
            if image is not None:
                return image.cam_from_world()
        return pycolmap.Rigid3d()


class InLocScene:
    """InLoc: 3D from the cutouts' XYZcut scans, aligned to the world by P_after_GICP."""

    def __init__(self, dataset: InLocDataset, preset: DatasetPreset):
        self.dataset = dataset
        self.preset = preset
        self.image_dir = dataset.root
        self.db_names = dataset.db_names
        self.queries = {name: dataset.query_camera(name) for name in dataset.query_names}
        self.source_of_3d = "cutout scans (XYZcut)"
        self._cache: dict[str, np.ndarray | None] = {}
        self.skipped_cutouts: dict[str, str] = {}  # cutout -> why its XYZcut is unusable

    def db_images_needed(self, retrieval: dict[str, list[str]]) -> list[str]:
        """Only the retrieved cutouts (InLoc has about 10k)."""
        return sorted({name for names in retrieval.values() for name in names})

    def prepare(self, paths: RunPaths, config: LocalizationConfig, timer: Timer, stamps: StampCache) -> None:
        """Nothing to build: the cutouts carry their 3D."""

    def query_inputs(self, name: str, retrieved: list[str], stamps: StampCache) -> str:
        """The query image and intrinsics, its retrieval list, and per retrieved cutout its image,
        scan (XYZcut, by size and time: 46 MB each) and alignment file."""
        root = self.dataset.root
        cutouts = [(stamps.digest(root / db), stat_stamp(root / self.dataset.cutout(db).xyz_name),
                    stamps.digest(root / self.dataset.cutout(db).transformation_name)) for db in retrieved]
        return settings_fingerprint(stamps.digest(root / name), camera_to_fields(self.queries[name]), retrieved,
                                    cutouts)

    def cutout_points(self, name: str) -> np.ndarray | None:
        """World points of a cutout's XYZcut; None (a counted skip, warned once) when the file is
        unusable: another shape than its image, not numbers, not a MATLAB file."""
        if name not in self._cache:
            if len(self._cache) >= 8:  # a real XYZcut is 1600 x 1200 x 3 doubles (46 MB)
                self._cache.pop(next(iter(self._cache)))
            try:
                self._cache[name] = self.dataset.cutout_xyz(name, world=True)
            except DatasetError as error:
                if name not in self.skipped_cutouts:
                    logger.warning("Skipping cutout %s: %s", name, error)
                self.skipped_cutouts[name] = str(error)
                self._cache[name] = None
        return self._cache[name]

    def localize(self, paths: RunPaths, retrieval: dict[str, list[str]], config: LocalizationConfig,
                 log: QueryLog) -> list[QueryResult]:
        results = []
        for threshold, queries in by_threshold(self.queries, self.preset, config).items():
            localizer_config = pose_from_cutouts.CutoutLocalizationConfig(
                PoseEstimationConfig(ransac_max_error=threshold), config.min_cutout_matches)
            results += pose_from_cutouts.main(queries, retrieval, paths.features, paths.query_matches,
                                              self.cutout_points, localizer_config, log)
        return results

    def fallback_pose(self, result: QueryResult, retrieval: list[str]) -> pycolmap.Rigid3d:
        return pycolmap.Rigid3d()

    def evaluation_groups(self, retrieval: dict[str, list[str]]) -> dict[str, str]:
        """Split by building floor: from the synthetic ground truth's `basename floor` list when
        there is one, else the floor of each query's best retrieved cutout."""
        floors_file = self.dataset.root / SYNTHETIC_QUERY_FLOORS
        if floors_file.is_file():
            return read_query_floors(floors_file)
        return {results_name(name): self.dataset.cutout(names[0]).floor
                for name, names in retrieval.items() if names}


def triangulation_options() -> pycolmap.IncrementalPipelineOptions:
    """COLMAP's options, but two-view tracks are kept: most D2 points of a sparse database are seen
    by two images only, and COLMAP's default (ignore them) would drop them all."""
    options = pycolmap.IncrementalPipelineOptions()
    options.triangulation.ignore_two_view_tracks = False
    return options


def by_threshold(queries: dict[str, pycolmap.Camera], preset: DatasetPreset, config: LocalizationConfig
                 ) -> dict[float, dict[str, pycolmap.Camera]]:
    """Queries grouped by their RANSAC threshold (the threshold follows the image size)."""
    groups: dict[float, dict[str, pycolmap.Camera]] = {}
    for name, camera in queries.items():
        groups.setdefault(round(ransac_threshold(preset, config, camera), 3), {})[name] = camera
    return groups


def dataset_hint(dataset: str, root: Path) -> str:
    """Where a dataset comes from, and how to try the pipeline on the synthetic look-alike."""
    if dataset == "kapture":
        from .datasets.kapture_dataset import missing_dataset_hint
        return missing_dataset_hint(root)
    synthetic = Path("datasets") / f"synthetic_{dataset}"
    return (f"download {DATASET_SOURCES[dataset]} into {root} (see datasets/README.md), or try the synthetic "
            f"look-alike: python -m d2_sfm.datasets.synthetic --layout {dataset} --output {synthetic} && "
            f"python -m d2_sfm.localize --dataset {dataset} --root {synthetic}")


def open_scene(dataset: str, root: Path) -> Scene:
    """The validated dataset; a missing dataset is one line saying where it comes from."""
    preset = PRESETS[dataset]
    root = Path(root)
    top = (root / QUERY_DIR, root / CUTOUT_DIR) if dataset == "inloc" else (root / IMAGE_DIR,)
    top = (root / "mapping", root / "query") if dataset == "kapture" else top
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found; {dataset_hint(dataset, root)}")
    try:
        if dataset == "inloc":
            return InLocScene(InLocDataset.from_root(root), preset)
        if dataset == "kapture":  # imported here: kapture_dataset builds on AachenScene
            from .datasets.kapture_dataset import KaptureDataset, KaptureScene
            return KaptureScene(KaptureDataset.from_root(root), preset)
        return AachenScene(AachenDataset.from_root(root, "v1_1" if dataset == "aachen_v1_1" else "v1_0"), preset)
    except DatasetError as error:
        if not all(folder.is_dir() for folder in top):
            raise DatasetError(f"{error}; {dataset_hint(dataset, root)}") from None
        raise


# ----------------------------------------------------------------------------------------------
# Retrieval


def top_k_retrieval(pairs: list[tuple[str, str]], queries: list[str], db_names: list[str], k: int, source: Path
                    ) -> dict[str, list[str]]:
    """{query: first k database images} of a pairs file (`query db` lines, best first)."""
    known_db, known_queries = set(db_names), set(queries)
    retrieval: dict[str, list[str]] = {q: [] for q in queries}
    unknown = set()
    for query, db_name in pairs:
        if query not in known_queries and db_name in known_queries:
            query, db_name = db_name, query
        if query not in known_queries or db_name not in known_db:
            unknown.add(query if query not in known_queries else db_name)
            continue
        if db_name not in retrieval[query] and len(retrieval[query]) < k:
            retrieval[query].append(db_name)
    if unknown:
        logger.warning("%s: %d names are neither queries nor database images of the dataset, e.g. %s "
                       "(their pairs are skipped)", source, len(unknown), sorted(unknown)[0])
    missing = [q for q, refs in retrieval.items() if not refs]
    if len(missing) == len(queries):
        raise LocalizationError(f"{source}: no line pairs a query of the dataset with a database image "
                                f"(expected 'query_name db_name' lines, names relative to the image folder)")
    if missing:
        logger.warning("%s: %d queries have no pair, e.g. %s (they will be failures)", source, len(missing), missing[0])
    return retrieval


def global_retrieval(scene: Scene, paths: RunPaths, extractor: D2Extractor, config: PairsConfig, k: int
                     ) -> dict[str, list[str]]:
    """{query: k most similar database images} by the GeM global descriptor of d2_sfm.pairs."""
    queries = list(scene.queries)
    compute_global_features(scene.image_dir, queries + scene.db_names, paths.global_features, extractor, config)
    available = set(list_h5_names(paths.global_features))
    db_names = [n for n in scene.db_names if n in available]
    query_names = [q for q in queries if q in available]
    similarity = (read_global_descriptors(paths.global_features, query_names)
                  @ read_global_descriptors(paths.global_features, db_names).T)
    retrieval = {q: [] for q in queries}
    for i, query in enumerate(query_names):
        order = np.argsort(-similarity[i], kind="stable")[:k]
        retrieval[query] = [db_names[j] for j in order]
    return retrieval


def write_retrieval(path: Path, retrieval: dict[str, list[str]]) -> Path:
    """`query db` lines, replaced atomically (a kill never leaves half a list for the next run)."""
    return write_pairs(path, [(q, r) for q, refs in retrieval.items() for r in refs])


# ----------------------------------------------------------------------------------------------
# The chain


def read_step_stamp(path: Path) -> dict:
    """The record of a finished step, {} when absent or damaged (= not finished)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def h5_attributes(path: Path) -> dict[str, str]:
    """The run attributes of a features file (weights, extraction settings)."""
    with h5py.File(path, "r") as f:
        return {k: str(v) for k, v in f.attrs.items()}


def results_path(output: Path, preset: DatasetPreset, config: LocalizationConfig, pairs: Path | None,
                 num_retrieved: int) -> Path:
    """`<Dataset>_d2sfm_<d2 settings>_<retrieval><K>.txt`, like hloc's result names."""
    features = "d2-ms" if config.extraction.multiscale else "d2-ss"
    retrieval = f"{Path(pairs).stem}-top{num_retrieved}" if pairs else f"gem{num_retrieved}"
    return Path(output) / f"{preset.results_prefix}_d2sfm_{features}_{retrieval}.txt"


def write_results(path: Path, scene: Scene, results: list[QueryResult], retrieval: dict[str, list[str]]) -> Path:
    """Every query, in dataset order; failures get the scene's fallback pose."""
    by_name = {r.name: r for r in results}
    poses = {}
    for name in scene.queries:
        result = by_name[name]
        pose = result.cam_from_world
        if pose is None:
            pose = scene.fallback_pose(result, retrieval.get(name, []))
        key = results_name(name)
        if key in poses:
            raise LocalizationError(f"two queries share the basename {key!r}: the results file needs unique names")
        poses[key] = pose
    return write_poses(path, poses)


def main(dataset: str, root: Path | None = None, output: Path | None = None, pairs: Path | None = None,
         config: LocalizationConfig = LocalizationConfig(), weights: str | None = None,
         ground_truth: Path | None = None, device: str = "cpu", extractor: D2Extractor | None = None) -> Path:
    """Localize every query of `dataset` at `root`; returns the results file (summary.json beside it).

    Every input (dataset files, the pairs file, the ground truth) is read and checked before any
    feature is computed; the output folder is locked for the whole run (a second run into it
    fails at once), and COLMAP's log goes to OUT/colmap.log only while this runs."""
    if dataset not in PRESETS:
        raise LocalizationError(f"unknown dataset {dataset!r}: expected one of {', '.join(PRESETS)}")
    preset = PRESETS[dataset]
    root = Path(root or preset.root)
    paths = RunPaths(Path(output or Path("outputs") / dataset))
    scene = open_scene(dataset, root)
    k = config.num_retrieved or preset.num_retrieved
    listed_pairs = read_retrieval_pairs(pairs) if pairs is not None else None
    if ground_truth is None and (root / SYNTHETIC_GROUND_TRUTH).is_file():
        ground_truth = root / SYNTHETIC_GROUND_TRUTH
    truth = read_poses(ground_truth) if ground_truth is not None else None
    if truth is None and getattr(scene, "ground_truth", None):  # kapture: query/sensors/trajectories.txt
        ground_truth, truth = scene.ground_truth_file, scene.ground_truth
    check_query_sizes(scene)
    if truth is not None:
        without = [name for name in scene.queries if results_name(name) not in truth]
        if len(without) == len(scene.queries):
            raise LocalizationError(f"ground truth {ground_truth} names none of the {len(scene.queries)} queries of "
                                    f"{root} (e.g. {results_name(without[0])}): is it another dataset's?")
        if without:
            logger.warning("%s has no pose for %d of %d queries (e.g. %s): they are left out of the evaluation",
                           ground_truth, len(without), len(scene.queries), results_name(without[0]))
    retrieval = (top_k_retrieval(listed_pairs, list(scene.queries), scene.db_names, k, pairs)
                 if listed_pairs is not None else None)
    if extractor is None:
        extractor = D2Extractor(weights, config.extraction, device)
    config = replace(config, extraction=extractor.config)  # a given extractor brings its own settings
    with output_lock(paths.output), colmap_log_to(paths.colmap_log):
        return run(scene, dataset, root, paths, pairs, retrieval, k, config, extractor, ground_truth, truth)


def check_query_sizes(scene: Scene) -> None:
    """A query's known intrinsics must be those of its image's size (read from the header)."""
    for name, camera in scene.queries.items():
        header = read_image_header(resolve_inside(scene.image_dir, name))
        if (camera.width, camera.height) != (header.width, header.height):
            raise LocalizationError(f"query {name}: its intrinsics are for a {camera.width}x{camera.height} image, "
                                    f"but {resolve_inside(scene.image_dir, name)} is {header.width}x{header.height}")


def run(scene: Scene, dataset: str, root: Path, paths: RunPaths, pairs: Path | None,
        retrieval: dict[str, list[str]] | None, k: int, config: LocalizationConfig, extractor: D2Extractor,
        ground_truth: Path | None, truth: dict[str, pycolmap.Rigid3d] | None) -> Path:
    """The five steps on validated inputs, in the locked output folder."""
    preset = scene.preset
    timer = Timer()
    start = time.time()
    stamps = StampCache(paths.input_stamps)
    logger.info("[1/5] Retrieval pairs")
    with timer("retrieval"):
        if retrieval is None:
            retrieval = global_retrieval(scene, paths, extractor, config.retrieval, k)
        write_retrieval(paths.query_pairs, retrieval)
    db_needed = scene.db_images_needed(retrieval)

    logger.info("[2/5] Local features of %d database and %d query images", len(db_needed), len(scene.queries))
    with timer("extract"):
        extraction = extract.main(scene.image_dir, paths.features, db_needed + list(scene.queries),
                                  config=config.extraction, extractor=extractor)
    if extraction.failed:
        raise LocalizationError(f"{len(extraction.failed)} images could not be read, e.g. "
                                + "; ".join(f"{n}: {r}" for n, r in list(extraction.failed.items())[:3]))

    logger.info("[3/5] 3D: %s", scene.source_of_3d)
    scene.prepare(paths, config, timer, stamps)
    stamps.save()

    logger.info("[4/5] Matching queries with their retrieved images")
    with timer("query_match"):
        match.main(paths.query_pairs, paths.features, paths.query_matches, config.matcher)

    logger.info("[5/5] Pose estimation")
    settings = {"config": config.as_dict(), "weights": extractor.weights.sha256, "dataset": dataset,
                "sfm": file_fingerprint(paths.sfm / STEP_STAMP) if (paths.sfm / STEP_STAMP).exists() else None}
    inputs = {name: scene.query_inputs(name, retrieval.get(name, []), stamps) for name in scene.queries}
    stamps.save()
    with timer("localize"):
        log = QueryLog(paths.pose_log, settings, inputs)
        results = scene.localize(paths, retrieval, config, log)
    results_file = write_results(results_path(paths.output, preset, config, pairs, k), scene, results, retrieval)

    report = None
    if truth is not None:
        report = evaluate.evaluate(read_poses(results_file), truth, evaluate.THRESHOLDS[preset.thresholds],
                                   scene.evaluation_groups(retrieval))
        logger.info("Recall against %s:\n%s", ground_truth, evaluate.format_report(report))
    timer.seconds["total"] = round(time.time() - start, 3)
    write_summary(paths, dataset, root, results_file, scene, results, config, extractor, pairs, k, timer,
                  ground_truth, report)
    write_report_or_warn(paths.output)
    localized = sum(r.success for r in results)
    logger.info("Localized %d of %d queries; results in %s", localized, len(results), results_file)
    return results_file


def write_summary(paths: RunPaths, dataset: str, root: Path, results_file: Path, scene: Scene,
                  results: list[QueryResult], config: LocalizationConfig, extractor: D2Extractor,
                  pairs: Path | None, k: int, timer: Timer, ground_truth: Path | None, report: dict | None) -> Path:
    return write_json(paths.summary, {
        "dataset": dataset,
        "root": str(root),
        "results": str(results_file),
        "weights": {"name": extractor.weights.name, "sha256": extractor.weights.sha256},
        "settings": {**config.as_dict(), "num_retrieved": k,
                     "retrieval_source": str(pairs) if pairs else "GeM global descriptor of D2-Net's dense map",
                     "ransac_max_error_px": {f"{threshold:g}": len(queries) for threshold, queries
                                             in by_threshold(scene.queries, scene.preset, config).items()}},
        "num_queries": len(results),
        "num_localized": sum(r.success for r in results),
        "failures": {r.name: r.failure for r in results if not r.success},
        "skipped_database_images": {db: reason for r in results for db, reason in r.skipped_db.items()},
        "queries": [r.to_json() for r in results],
        "timings_s": timer.seconds,
        "ground_truth": str(ground_truth) if ground_truth else None,
        "evaluation": report,
    })


# ----------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    default = LocalizationConfig()
    matcher = MatcherConfig()
    parser = argparse.ArgumentParser(prog="python -m d2_sfm.localize", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(PRESETS), required=True)
    parser.add_argument("--root", type=Path, help="dataset folder (default: datasets/aachen, "
                                                  "datasets/aachen_v1.1, datasets/inloc or datasets/kapture; "
                                                  "kapture: mapping/ and query/ kapture folders)")
    parser.add_argument("--output", type=Path, help="output folder (default: outputs/<dataset>)")
    parser.add_argument("--pairs", type=Path, help="retrieval pairs 'query db' per line, best first (e.g. "
                                                   "hloc's pairs-query-netvlad50.txt); default: our GeM retrieval")
    parser.add_argument("--num-retrieved", type=int, default=default.num_retrieved,
                        help="database images per query (default: Aachen 50, InLoc 40)")
    parser.add_argument("--num-covisible", type=int, default=default.num_covisible,
                        help="Aachen: covisible database pairs per image for triangulation")
    parser.add_argument("--covisibility-clustering", action="store_true",
                        help="Aachen: estimate a pose per cluster of covisible retrieved images, keep the best")
    parser.add_argument("--ransac-max-error", type=float, default=default.ransac_max_error,
                        help="RANSAC threshold in query pixels (default: Aachen 12 px, InLoc 48 px, "
                             "scaled for queries smaller than 1600 / 4032 px)")
    parser.add_argument("--ground-truth", type=Path,
                        help="query poses in the results format, to report the benchmark's recall")
    parser.add_argument("--ratio-threshold", type=float, default=matcher.ratio_threshold,
                        help="matcher: Lowe's ratio (default: mutual nearest neighbours only)")
    add_extraction_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> LocalizationConfig:
    if args.num_retrieved is not None and args.num_retrieved < 1:
        raise LocalizationError("--num-retrieved must be at least 1")
    return LocalizationConfig(num_retrieved=args.num_retrieved, num_covisible=args.num_covisible,
                              covisibility_clustering=args.covisibility_clustering,
                              ransac_max_error=args.ransac_max_error,
                              extraction=extraction_config_from_args(args),
                              matcher=replace(MatcherConfig(), ratio_threshold=args.ratio_threshold))


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    main(args.dataset, args.root, args.output, args.pairs, config_from_args(args), args.weights,
         args.ground_truth, args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(cli))
