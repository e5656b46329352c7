"""Pipeline: visual localization with D2-Net features on Aachen Day-Night (v1.0, v1.1) and InLoc.

python -m d2_sfm.localize --dataset aachen|aachen_v1_1|inloc [--root DIR] [--output OUT]
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

import cv2  # noqa: F401  (pycolmap 4.2.1 must be imported after cv2, see the pycolmap tour)
import h5py
import numpy as np
import pycolmap

from .fingerprint import file_fingerprint, settings_fingerprint
from . import extract, match, triangulate
from .cli import add_extraction_arguments, extraction_config_from_args, run_cli
from .datasets.aachen import MODEL_V1_1_DIR, NVM_FILE, AachenDataset
from .datasets.formats import read_nvm, read_pairs as read_retrieval_pairs, read_poses, write_poses
from .datasets.inloc import InLocDataset
from .extractor import D2Extractor, ExtractionConfig
from .h5io import list_h5_names
from .localization import covisibility, evaluate, pose_from_cutouts, pose_from_model
from .localization.estimation import (LocalizationError, PoseEstimationConfig, QueryLog, QueryResult, Timer,
                                      results_name, write_json)
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
}
SYNTHETIC_GROUND_TRUTH = "ground_truth/queries.txt"  # written by d2_sfm.datasets.synthetic
SYNTHETIC_QUERY_FLOORS = "ground_truth/query_floors.txt"
STEP_STAMP = "d2_sfm_step.json"  # in the triangulated model's folder: the settings it was made with


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

    def prepare(self, paths: RunPaths, config: LocalizationConfig, timer: Timer) -> None: ...

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
            return covisibility.Observations.from_reconstruction(pycolmap.Reconstruction(str(root / MODEL_V1_1_DIR)))
        nvm = read_nvm(root / NVM_FILE)
        return covisibility.Observations([c.name for c in nvm.cameras], nvm.points.image_index,
                                         nvm.points.point_index)

    def prepare(self, paths: RunPaths, config: LocalizationConfig, timer: Timer) -> None:
        """Covisible database pairs, their matches, and the triangulated model (skipped when a
        model made from the same features and settings is there)."""
        stamp = paths.sfm / STEP_STAMP
        key = settings_fingerprint(str(self.dataset.root), self.dataset.version, self.db_names,
                                   config.num_covisible, asdict(config.matcher), h5_attributes(paths.features))
        if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
            logger.info("Triangulated model %s is up to date: skipped", paths.sfm)
            return
        with timer("db_pairs"):
            covisibility.main(self.reference, paths.db_pairs, config.num_covisible, self.observations())
        with timer("db_match"):
            match.main(paths.db_pairs, paths.features, paths.db_matches, config.matcher)
        with timer("triangulate"):
            triangulate.main(self.reference, self.image_dir, paths.db_pairs, paths.features, paths.db_matches,
                             paths.sfm, mapper_options=triangulation_options())
        stamp.write_text(json.dumps({"key": key}))

    def localize(self, paths: RunPaths, retrieval: dict[str, list[str]], config: LocalizationConfig,
                 log: QueryLog) -> list[QueryResult]:
        model = pycolmap.Reconstruction(str(paths.sfm))
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
        self._cache: dict[str, np.ndarray] = {}

    def db_images_needed(self, retrieval: dict[str, list[str]]) -> list[str]:
        """Only the retrieved cutouts (InLoc has about 10k)."""
        return sorted({name for names in retrieval.values() for name in names})

    def prepare(self, paths: RunPaths, config: LocalizationConfig, timer: Timer) -> None:
        """Nothing to build: the cutouts carry their 3D."""

    def cutout_points(self, name: str) -> np.ndarray:
        if name not in self._cache:
            if len(self._cache) >= 8:  # a real XYZcut is 1600 x 1200 x 3 doubles (46 MB)
                self._cache.pop(next(iter(self._cache)))
            self._cache[name] = self.dataset.cutout_xyz(name, world=True)
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
            return {fields[0]: fields[1] for fields in map(str.split, floors_file.read_text().splitlines())
                    if len(fields) == 2}
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


def open_scene(dataset: str, root: Path) -> Scene:
    preset = PRESETS[dataset]
    if dataset == "inloc":
        return InLocScene(InLocDataset.from_root(root), preset)
    return AachenScene(AachenDataset.from_root(root, "v1_1" if dataset == "aachen_v1_1" else "v1_0"), preset)


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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{q} {r}\n" for q, refs in retrieval.items() for r in refs))
    return path


# ----------------------------------------------------------------------------------------------
# The chain


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


def configure_colmap_logging(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pycolmap.logging.set_log_destination(pycolmap.logging.INFO, str(path))
    pycolmap.logging.logtostderr = False
    pycolmap.logging.alsologtostderr = False
    pycolmap.logging.stderrthreshold = 2  # COLMAP errors still reach the terminal


def main(dataset: str, root: Path | None = None, output: Path | None = None, pairs: Path | None = None,
         config: LocalizationConfig = LocalizationConfig(), weights: str | None = None,
         ground_truth: Path | None = None, device: str = "cpu", extractor: D2Extractor | None = None) -> Path:
    """Localize every query of `dataset` at `root`; returns the results file (summary.json beside it)."""
    if dataset not in PRESETS:
        raise LocalizationError(f"unknown dataset {dataset!r}: expected one of {', '.join(PRESETS)}")
    preset = PRESETS[dataset]
    root = Path(root or preset.root)
    paths = RunPaths(Path(output or Path("outputs") / dataset))
    timer = Timer()
    start = time.time()
    scene = open_scene(dataset, root)
    configure_colmap_logging(paths.colmap_log)
    k = config.num_retrieved or preset.num_retrieved
    if extractor is None:
        extractor = D2Extractor(weights, config.extraction, device)
    config = replace(config, extraction=extractor.config)  # a given extractor brings its own settings

    logger.info("[1/5] Retrieval pairs")
    with timer("retrieval"):
        if pairs is not None:
            retrieval = top_k_retrieval(read_retrieval_pairs(pairs), list(scene.queries), scene.db_names, k, pairs)
        else:
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
    scene.prepare(paths, config, timer)

    logger.info("[4/5] Matching queries with their retrieved images")
    with timer("query_match"):
        match.main(paths.query_pairs, paths.features, paths.query_matches, config.matcher)

    logger.info("[5/5] Pose estimation")
    settings = {"config": config.as_dict(), "weights": extractor.weights.sha256, "dataset": dataset,
                "pairs": file_fingerprint(paths.query_pairs), "sfm": file_fingerprint(paths.sfm / STEP_STAMP)
                if (paths.sfm / STEP_STAMP).exists() else None}
    with timer("localize"):
        log = QueryLog(paths.pose_log, settings)
        results = scene.localize(paths, retrieval, config, log)
    results_file = write_results(results_path(paths.output, preset, config, pairs, k), scene, results, retrieval)

    report = None
    ground_truth = ground_truth or (root / SYNTHETIC_GROUND_TRUTH if (root / SYNTHETIC_GROUND_TRUTH).is_file() else None)
    if ground_truth is not None:
        report = evaluate.evaluate(read_poses(results_file), read_poses(ground_truth),
                                   evaluate.THRESHOLDS[preset.thresholds], scene.evaluation_groups(retrieval))
        logger.info("Recall against %s:\n%s", ground_truth, evaluate.format_report(report))
    timer.seconds["total"] = round(time.time() - start, 3)
    write_summary(paths, dataset, root, results_file, scene, results, config, extractor, pairs, k, timer,
                  ground_truth, report)
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
                                                  "datasets/aachen_v1.1 or datasets/inloc)")
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
