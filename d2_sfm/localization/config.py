"""Settings of a localization run: dataset presets, the run's config, the files it writes.

Imports neither torch nor pycolmap (the retrieval settings are made on first use), so that
`python -m d2_sfm.localize --help`, argument errors and a missing dataset answer at once.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..configs import ExtractionConfig, MatcherConfig, RefineConfig
from ..datasets import DatasetError
from ..errors import check_options
from ..executors import ExecutorConfig

if TYPE_CHECKING:
    from ..colmap import pycolmap
    from ..pairs import PairsConfig


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
}


def default_retrieval() -> PairsConfig:
    from ..pairs import PairsConfig  # torch: imported when a run is configured

    return PairsConfig(mode="retrieval")


@dataclass(frozen=True)
class LocalizationConfig:
    """Settings of a localization run (written to summary.json)."""

    num_retrieved: int | None = None  # None: the dataset's default
    num_covisible: int = 20  # Aachen: database pairs per image for triangulation (hloc: 20)
    covisibility_clustering: bool = False  # Aachen: one pose per cluster of covisible db images
    ransac_max_error: float | None = None  # px; None: the dataset's default, scaled to the query size
    min_cutout_matches: int = 20  # InLoc: skip cutouts with fewer matches (hloc skip_matches)
    extraction: ExtractionConfig = ExtractionConfig()
    matcher: MatcherConfig = MatcherConfig()
    # GeM retrieval settings (image size, pooling); the number of neighbours is num_retrieved
    retrieval: PairsConfig = field(default_factory=default_retrieval)
    # keypoint refinement (mode none: off): the database keypoints before triangulation
    # (Aachen, kapture) and each correspondence's query keypoint before PnP (every dataset)
    refine: RefineConfig = RefineConfig()

    def __post_init__(self) -> None:
        check_options("localization", num_retrieved=self.num_retrieved is not None and self.num_retrieved < 1,
                      num_covisible=self.num_covisible < 1, min_cutout_matches=self.min_cutout_matches < 0,
                      ransac_max_error=self.ransac_max_error is not None and not self.ransac_max_error > 0)

    def as_dict(self) -> dict[str, object]:
        """Every setting of the results (the refine step's performance-only options left out)."""
        return json.loads(json.dumps({**asdict(self), "refine": self.refine.settings()}, default=str))


def ransac_threshold(preset: DatasetPreset, config: LocalizationConfig, camera: pycolmap.Camera) -> float:
    if config.ransac_max_error is not None:
        return config.ransac_max_error
    return preset.ransac_max_error * max(camera.width, camera.height) / preset.ransac_reference_edge


def by_threshold(queries: dict[str, pycolmap.Camera], preset: DatasetPreset, config: LocalizationConfig
                 ) -> dict[float, dict[str, pycolmap.Camera]]:
    """Queries grouped by their RANSAC threshold (the threshold follows the image size)."""
    groups: dict[float, dict[str, pycolmap.Camera]] = {}
    for name, camera in queries.items():
        groups.setdefault(round(ransac_threshold(preset, config, camera), 3), {})[name] = camera
    return groups


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
        self.db_refined_features = self.output / "features-db-refined.h5"  # --refine keypoints: triangulated
        self.sfm = self.output / "sfm_d2"
        self.query_pairs = self.output / "pairs-query.txt"
        self.query_matches = self.output / "matches-query.h5"
        self.pose_log = self.output / "poses.jsonl"
        self.summary = self.output / "summary.json"
        self.colmap_log = self.output / "colmap.log"
        self.input_stamps = self.output / "input-stamps.json"  # FileStamps of dataset files and images
        self.image_checks = self.output / "image-checks.json"  # which input images are readable (headers)


def results_path(output: Path, preset: DatasetPreset, config: LocalizationConfig, pairs: Path | None,
                 num_retrieved: int) -> Path:
    """`<Dataset>_d2sfm_<d2 settings>_<retrieval><K>.txt`, like hloc's result names."""
    features = "d2-ms" if config.extraction.multiscale else "d2-ss"
    retrieval = f"{Path(pairs).stem}-top{num_retrieved}" if pairs else f"gem{num_retrieved}"
    return Path(output) / f"{preset.results_prefix}_d2sfm_{features}_{retrieval}.txt"


@dataclass(frozen=True)
class Workers:
    """Where a run's work happens; not a setting of its results (they are the same either way)."""

    executor: ExecutorConfig = field(default_factory=ExecutorConfig)  # this process, or a Ray cluster
    device: str = "cpu"  # the extraction's torch device

    @property
    def matching_device(self) -> str:
        """Matching runs on this process's CPU; Ray workers use the extraction's device (GPU tasks
        need --device cuda and --ray-gpus-per-task)."""
        return self.device if self.executor.is_ray else "cpu"


# ----------------------------------------------------------------------------------------------
# A missing dataset: one line saying where it comes from


def dataset_hint(dataset: str, root: Path) -> str:
    """Where a dataset comes from, and how to try the pipeline on the synthetic look-alike."""
    if dataset == "kapture":
        synthetic = Path("datasets") / "synthetic_kapture"
        return (f"put a kapture localization dataset in {root} (mapping/ and query/ kapture folders, e.g. from "
                f"kapture's kapture_download_dataset.py), or try the synthetic look-alike: "
                f"python -m d2_sfm.datasets.kapture_dataset --output {synthetic} && "
                f"python -m d2_sfm.localize --dataset kapture --root {synthetic}")
    synthetic = Path("datasets") / f"synthetic_{dataset}"
    return (f"download {DATASET_SOURCES[dataset]} into {root} (see datasets/README.md), or try the synthetic "
            f"look-alike: python -m d2_sfm.datasets.synthetic --layout {dataset} --output {synthetic} && "
            f"python -m d2_sfm.localize --dataset {dataset} --root {synthetic}")


def require_dataset_folder(dataset: str, root: Path) -> None:
    """A missing dataset folder is one DatasetError line with the hint (checked before anything
    heavy is imported or computed)."""
    if not Path(root).is_dir():
        raise DatasetError(f"{root}: dataset folder not found; {dataset_hint(dataset, root)}")
