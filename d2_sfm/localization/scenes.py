"""The two ways a dataset gives localize its 3D: a triangulated model (Aachen, kapture) or the
cutouts' scans (InLoc). Each scene says which database images to extract, builds what it needs
(`prepare`), fingerprints a query's inputs, localizes the queries and names a fallback pose.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import numpy as np

from .. import match, refine, triangulate
from ..atomic import write_json
from ..configs import RefineConfig
from ..colmap import pycolmap
from ..datasets import DatasetError
from ..datasets.aachen import DATABASE_FILE, DB_INTRINSICS_FILE, IMAGE_DIR, MODEL_V1_1_DIR, NVM_FILE, AachenDataset
from ..datasets.formats import camera_to_fields
from ..datasets.inloc import CUTOUT_DIR, QUERY_DIR, InLocDataset, read_query_floors
from ..datasets.kapture_dataset import CONDITIONS as KAPTURE_CONDITIONS
from ..datasets.kapture_dataset import KaptureDataset
from ..fingerprint import settings_fingerprint
from ..h5io import read_file_attributes
from ..pair_selection import Observations
from . import covisibility, pose_from_cutouts, pose_from_model
from .config import (PRESETS, STEP_STAMP, SYNTHETIC_QUERY_FLOORS, DatasetPreset, LocalizationConfig, RunPaths,
                     Workers, by_threshold, dataset_hint, require_dataset_folder)
from .estimation import KeypointRefiner, PoseEstimationConfig, QueryLog, QueryResult, Timer, results_name
from .inputs import StampCache, stat_stamp
from .model import load_model

logger = logging.getLogger(__name__)


class Scene(Protocol):
    """What the shared chain needs from a dataset."""

    preset: DatasetPreset
    image_dir: Path
    db_names: list[str]
    queries: dict[str, pycolmap.Camera]  # name (relative to image_dir) -> known intrinsics
    source_of_3d: str  # for the log

    def db_images_needed(self, retrieval: dict[str, list[str]]) -> list[str]: ...

    def prepare(self, paths: RunPaths, config: LocalizationConfig, timer: Timer, stamps: StampCache,
                workers: Workers, unreadable: dict[str, str]) -> None: ...

    def query_inputs(self, name: str, retrieved: list[str], stamps: StampCache) -> str: ...

    def localize(self, paths: RunPaths, retrieval: dict[str, list[str]], config: LocalizationConfig,
                 log: QueryLog, workers: Workers, refiner: KeypointRefiner | None = None) -> list[QueryResult]:
        """The queries of `retrieval` (the readable ones), each against its (readable) retrieved images."""

    def fallback_pose(self, result: QueryResult, retrieval: list[str]) -> pycolmap.Rigid3d: ...

    def evaluation_groups(self, retrieval: dict[str, list[str]]) -> dict[str, str]: ...


def read_step_stamp(path: Path) -> dict:
    """The record of a finished step, {} when absent or damaged (= not finished)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def triangulation_options() -> pycolmap.IncrementalPipelineOptions:
    """COLMAP's options, but two-view tracks are kept: most D2 points of a sparse database are seen
    by two images only, and COLMAP's default (ignore them) would drop them all."""
    options = pycolmap.IncrementalPipelineOptions()
    options.triangulation.ignore_two_view_tracks = False
    return options


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

    def observations(self) -> Observations | None:
        """Which database image sees which point, from the dataset's own (SIFT) model."""
        return self.dataset.observations()

    def dataset_files(self) -> list[Path]:
        """The files the reference poses and covisibility come from."""
        root = self.dataset.root
        if self.dataset.version == "v1_1":
            return sorted(p for p in (root / MODEL_V1_1_DIR).iterdir() if p.suffix in (".bin", ".txt"))
        return [p for p in (root / NVM_FILE, root / DB_INTRINSICS_FILE, root / DATABASE_FILE) if p.exists()]

    def prepare(self, paths: RunPaths, config: LocalizationConfig, timer: Timer, stamps: StampCache,
                workers: Workers, unreadable: dict[str, str]) -> None:
        """Covisible database pairs, their matches, with --refine keypoints their refined keypoints
        (OUT/features-db-refined.h5), and the triangulated model (skipped when a model made from the
        same dataset files, database images, features and settings is there). The `unreadable`
        database images are in no pair: the model keeps their poses, without 3D points."""
        stamp = paths.sfm / STEP_STAMP
        parts = {
            "settings": settings_fingerprint(str(self.dataset.root), self.dataset.version, self.db_names,
                                             config.num_covisible, asdict(config.matcher),
                                             read_file_attributes(paths.features, "features file")),
            "dataset files": settings_fingerprint(stamps.digests(self.dataset_files(), self.dataset.root)),
            "database images": settings_fingerprint(stamps.digests([self.image_dir / n for n in self.db_names],
                                                                   self.image_dir)),
        }
        if config.refine.mode != "none":  # absent for none: models made before --refine existed stay valid
            parts["refine"] = settings_fingerprint(config.refine.settings())
        if unreadable:  # absent when every image is read, likewise
            parts["unreadable database images"] = settings_fingerprint(sorted(unreadable))
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
            covisibility.main(self.reference, paths.db_pairs, config.num_covisible, self.observations(),
                              exclude=set(unreadable))
        with timer("db_match"):
            match.main(paths.db_pairs, paths.features, paths.db_matches, config.matcher,
                       device=workers.matching_device, executor=workers.executor)
        features = paths.features
        if config.refine.mode != "none":
            with timer("refine_db"):
                refine.main(self.image_dir, paths.features, paths.db_matches, paths.db_pairs,
                            paths.db_refined_features, config.refine, workers.device)
            features = paths.db_refined_features
        with timer("triangulate"):
            # this scene refines the keypoints itself (above) and adjusts the points (below)
            plain = triangulate.TriangulationConfig(refine=RefineConfig(mode="none"))
            model = triangulate.main(self.reference, self.image_dir, paths.db_pairs, features, paths.db_matches,
                                     paths.sfm, plain, mapper_options=triangulation_options())
        if config.refine.bundle_adjusts:
            with timer("bundle_db"):
                triangulate.adjust_points(model, self.image_dir, paths.sfm, config.refine, workers.device)
        write_json(stamp, {"key": key, "parts": parts})

    def query_inputs(self, name: str, retrieved: list[str], stamps: StampCache) -> str:
        """The query image, its intrinsics and retrieval list (the model is in the step settings)."""
        return settings_fingerprint(stamps.digest(self.image_dir / name), camera_to_fields(self.queries[name]),
                                    retrieved)

    def localize(self, paths: RunPaths, retrieval: dict[str, list[str]], config: LocalizationConfig,
                 log: QueryLog, workers: Workers, refiner: KeypointRefiner | None = None) -> list[QueryResult]:
        model = load_model(paths.sfm)
        results = []
        readable = {name: camera for name, camera in self.queries.items() if name in retrieval}
        for threshold, queries in by_threshold(readable, self.preset, config).items():
            localizer_config = pose_from_model.ModelLocalizationConfig(
                PoseEstimationConfig(ransac_max_error=threshold), config.covisibility_clustering)
            results += pose_from_model.main(model, queries, retrieval, paths.features, paths.query_matches,
                                            localizer_config, log, workers.executor, refiner)
        return results

    def fallback_pose(self, result: QueryResult, retrieval: list[str]) -> pycolmap.Rigid3d:
        """The pose of the best retrieved database image (hloc's fallback), else the identity."""
        for name in retrieval:
            image = self.reference.find_image_with_name(name)
            if image is not None:
                return image.cam_from_world()
        return pycolmap.Rigid3d()


class KaptureScene(AachenScene):
    """The Aachen chain on a kapture dataset: D2 points triangulated in the mapping poses,
    database pairs from the poses; ground truth from the query trajectories when present."""

    def __init__(self, dataset: KaptureDataset, preset: DatasetPreset):
        super().__init__(dataset, preset)  # type: ignore[arg-type]  (duck-typed: same fields as AachenDataset)
        self.source_of_3d = "D2 points triangulated in the mapping poses"
        self.ground_truth = dataset.ground_truth() or None
        self.ground_truth_file = dataset.query.trajectories_file

    def observations(self) -> None:
        """No SIFT model to read: covisibility falls back to the mapping poses."""
        return None

    def dataset_files(self) -> list[Path]:
        return self.dataset.dataset_files()

    def evaluation_groups(self, retrieval: dict[str, list[str]]) -> dict[str, str]:
        return {q.basename: q.condition for q in self.dataset.queries if q.condition in KAPTURE_CONDITIONS}


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

    def prepare(self, paths: RunPaths, config: LocalizationConfig, timer: Timer, stamps: StampCache,
                workers: Workers, unreadable: dict[str, str]) -> None:
        """Nothing to build: the cutouts carry their 3D (an unreadable one is left out of retrieval)."""

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
                 log: QueryLog, workers: Workers, refiner: KeypointRefiner | None = None) -> list[QueryResult]:
        results = []
        readable = {name: camera for name, camera in self.queries.items() if name in retrieval}
        for threshold, queries in by_threshold(readable, self.preset, config).items():
            localizer_config = pose_from_cutouts.CutoutLocalizationConfig(
                PoseEstimationConfig(ransac_max_error=threshold), config.min_cutout_matches)
            results += pose_from_cutouts.main(queries, retrieval, paths.features, paths.query_matches,
                                              self.cutout_points, localizer_config, log, workers.executor, refiner)
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


def open_scene(dataset: str, root: Path) -> Scene:
    """The validated dataset; a missing dataset is one line saying where it comes from."""
    preset = PRESETS[dataset]
    root = Path(root)
    top = (root / QUERY_DIR, root / CUTOUT_DIR) if dataset == "inloc" else (root / IMAGE_DIR,)
    top = (root / "mapping", root / "query") if dataset == "kapture" else top
    require_dataset_folder(dataset, root)
    try:
        if dataset == "inloc":
            return InLocScene(InLocDataset.from_root(root), preset)
        if dataset == "kapture":
            return KaptureScene(KaptureDataset.from_root(root), preset)
        return AachenScene(AachenDataset.from_root(root, "v1_1" if dataset == "aachen_v1_1" else "v1_0"), preset)
    except DatasetError as error:
        if not all(folder.is_dir() for folder in top):
            raise DatasetError(f"{error}; {dataset_hint(dataset, root)}") from None
        raise
