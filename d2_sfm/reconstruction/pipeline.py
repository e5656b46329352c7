"""The reconstruction pipeline: a `ReconstructionConfig`, the `Pipeline` that chains the steps in
an output folder (each skipped when its outputs are complete and were made with the same
settings), and `main()`, which validates everything a run will read before it deletes or computes."""
from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import colmap_db, extract, match, pairs, refine
from ..atomic import write_json
from ..colmap import pycolmap
from ..colmap_cameras import CameraConfig
from ..colmap_import import VerificationConfig
from ..colmap_log import colmap_log_to
from ..executors import ExecutorConfig
from ..extractor import D2Extractor, ExtractionConfig
from ..fingerprint import file_fingerprint, settings_fingerprint
from ..formats_d2net import IMPORTED_WEIGHTS, d2net_path, import_d2net_npz
from ..h5io import feature_records, list_h5_names
from ..images import ImageListing, list_images, list_images_report, read_image_header
from ..locking import output_lock
from ..matching import MatcherConfig
from ..pairs import PairsConfig
from ..refinement.bundle import adjust_reconstruction, image_loader
from ..configs import RefineConfig
from ..paths import check_pair_key_collisions, resolve_inside
from ..report import write_report_or_warn
from ..visualize import save_overview
from ..weights import resolve as resolve_weights
from .layout import STEPS, OutputLayout, ReconstructionError, StepLog, image_files_key, remove_outputs
from .mapping import MapperConfig, best_model, map_images, mapper_options
from .reliability import ReliabilityConfig, assess_model, initial_cameras
from .stability import stability_check, stability_warnings
from .summary import (ReconstructionSummary, features_weights, ground_truth_report, model_statistics,
                      no_pairs_message, pair_counts, too_few_images_message)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconstructionConfig:
    weights: str | None = None  # see d2_sfm.weights; None: d2_tf if available, else hed_vgg16
    extraction: ExtractionConfig = ExtractionConfig()
    pairs: PairsConfig = PairsConfig()
    pairs_file: Path | None = None  # pairs mode "file": the user's pairs file
    matcher: MatcherConfig = MatcherConfig()
    refine: RefineConfig = RefineConfig()  # featuremetric keypoint adjustment before the database (mode none: off)
    camera: CameraConfig = CameraConfig()
    verification: VerificationConfig = VerificationConfig()
    mapper: MapperConfig = MapperConfig()
    reliability: ReliabilityConfig = ReliabilityConfig()
    device: str = "cpu"
    import_d2net: bool = False  # features from the official <image>.d2-net files next to the images
    executor: ExecutorConfig = ExecutorConfig()  # where extraction and matching run: same outputs, not recorded

    def settings(self) -> dict[str, object]:
        return {"weights": self.weights, "import_d2net": self.import_d2net,
                "extraction": self.extraction.as_attributes(),
                "pairs": self.pairs.as_dict(), "pairs_file": str(self.pairs_file) if self.pairs_file else None,
                "matcher": asdict(self.matcher), "refine": self.refine.settings(), "camera": self.camera.as_dict(),
                "verification": self.verification.as_dict(), "mapper": self.mapper.as_dict(),
                "reliability": self.reliability.as_dict(), "device": self.device}


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

    def run_step(self, step: str, key: str, body) -> None:
        self.keys[step] = key
        index = STEPS.index(step) + 1
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
                               extractor=self.extractor(), executor=self.config.executor)
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
                   overwrite=not resume, executor=self.config.executor)
        return {"match": time.time() - start}, {}

    def refine(self, resume: bool) -> tuple[dict, dict]:
        summary = refine.main(self.image_dir, self.out.features, self.out.matches, self.out.pairs,
                              self.out.refined_features, self.config.refine, self.config.device, overwrite=not resume)
        return {"refine": summary.seconds}, {"refine": {"num_tracks": summary.num_tracks,
                                                        "keypoints_moved": summary.keypoints_moved,
                                                        "median_shift_px": summary.median_shift,
                                                        "max_shift_px": summary.max_shift}}

    def database_features(self) -> Path:
        """The keypoints the database imports: refined ones unless --refine none."""
        return self.out.features if self.config.refine.mode == "none" else self.out.refined_features

    def database(self, resume: bool) -> tuple[dict, dict]:
        summary = colmap_db.main(self.out.database, self.image_dir, self.out.pairs, self.database_features(),
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
        mapper, known = self.config.mapper, self.log.get("database", "known_camera_ids", [])
        try:
            models = map_images(mapper, self.out.database, self.image_dir, self.out.models, self.out.mapping_work,
                                len(self.names), known)
        except (ValueError, RuntimeError) as error:  # a failed COLMAP check surfaces as ValueError
            raise ReconstructionError(f"pycolmap's {mapper.method} mapping failed: {error} "
                                      f"(log: {self.out.log})") from error
        best = best_model(models)
        if best is None or best.num_reg_images() < 2:
            found = "no initial pair" if mapper.method == "incremental" else "no two views to register together"
            raise ReconstructionError(f"pycolmap's {mapper.method} mapper found {found} among "
                                      f"{sum(s.kept for s in stats)} verified pairs (see {self.out.log}); more "
                                      "overlap between images, more images, or --multiscale may help")
        timings = {"map": time.time() - start}
        notes: dict[str, object] = {"num_models": len(models)}
        if self.config.refine.bundle_adjusts:
            timings["bundle"], adjusted = self.bundle_adjust(best)
            notes.update(adjusted)
        self.out.sfm.mkdir(parents=True)
        best.write(str(self.out.sfm))
        best.export_PLY(str(self.out.ply))
        if len(models) == 1:
            shutil.rmtree(self.out.models, ignore_errors=True)
        save_overview(best, self.out.overview)
        start = time.time()
        stability = self.check_stability(best, stats, known, notes.get("registration_points"))
        if stability is not None:
            timings["stability"] = time.time() - start
        return timings, {**notes, "stability": stability or []}

    def bundle_adjust(self, model: pycolmap.Reconstruction) -> tuple[float, dict[str, object]]:
        """Featuremetric bundle adjustment of the mapped model, in place: its seconds and notes. The
        registration evidence stays the mapper's counts: the bundle drops observations by a stricter
        test (photometric), which would otherwise read as weakly registered images."""
        registered = {image.name: image.num_points3D for image in model.images.values() if image.has_pose}
        adjust_poses = len(registered) <= self.config.refine.bundle.max_pose_images
        if not adjust_poses:
            logger.warning("Bundle adjustment: %d registered images (more than %d): the poses stay as mapped, only "
                           "the 3D points are adjusted", len(registered), self.config.refine.bundle.max_pose_images)
        report = adjust_reconstruction(model, image_loader(self.image_dir, self.config.refine, self.config.device),
                                       self.config.refine, self.config.device, constant_poses=not adjust_poses,
                                       free_cameras=self.recalibrated_cameras(model) if adjust_poses else [])
        return report.seconds, {"bundle": {**report.as_dict(), "poses_adjusted": adjust_poses},
                                "registration_points": registered}

    def recalibrated_cameras(self, model: pycolmap.Reconstruction) -> list[int]:
        """The cameras whose intrinsics the bundle adjustment refines (BundleConfig.refine_intrinsics):
        the self-calibrated ones, and the known ones too with --refine-known-intrinsics."""
        if not self.config.refine.bundle.refine_intrinsics:
            return []
        known = set(self.log.get("database", "known_camera_ids", []))
        return [camera_id for camera_id in model.cameras
                if camera_id not in known or self.config.mapper.refine_known_intrinsics]

    def check_stability(self, best: pycolmap.Reconstruction, stats: list[colmap_db.PairStats],
                        known_camera_ids: list[int], registration_points: dict[str, int] | None
                        ) -> list[dict[str, object]] | None:
        """Stability runs (None: not run), unless the model is too large, or already flagged by the
        cheaper checks (the status is UNRELIABLE either way)."""
        reliability = self.config.reliability
        if not reliability.stability_runs or len(self.names) > reliability.stability_max_images:
            return None
        assessment = assess_model(best, stats, self.log.get("database", "camera_sources", {}),
                                  initial_cameras(self.out.database), len(self.names), reliability,
                                  registration_points)
        if assessment.status == "unreliable":
            logger.info("Stability check skipped: the model is already flagged unreliable")
            return None
        options = mapper_options(self.config.mapper, known_camera_ids)
        skip = 1 if self.config.mapper.method == "incremental" else 0  # the mapper's own start: no news
        return stability_check(self.out.database, self.image_dir, self.out.stability_work, best, stats, options,
                               reliability, skip)

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
            image_files_key(self.image_dir, inputs)), self.extract)
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
            self.make_pairs)
        self.run_step("match", settings_fingerprint(
            self.keys["pairs"], file_fingerprint(self.out.pairs), asdict(config.matcher)),
            self.match)
        if config.refine.mode == "none":
            logger.info("[%d/%d] refine: skipped (--refine none)", STEPS.index("refine") + 1, len(STEPS))
        else:
            self.run_step("refine", settings_fingerprint(self.keys["match"], config.refine.settings()), self.refine)
        self.run_step("database", settings_fingerprint(
            self.keys["match"], config.refine.settings(), config.camera.as_dict(),
            file_fingerprint(config.camera.intrinsics_file), config.verification.as_dict()),
            self.database)
        self.run_step("map", settings_fingerprint(
            self.keys["database"], config.mapper.as_dict(), config.reliability.as_dict(),
            sorted(self.ground_truth) if self.ground_truth else None),
            self.map)
        return self.summarise(listed, failed)

    def summarise(self, listed: list[str], failed: dict[str, str]) -> ReconstructionSummary:
        reconstruction = pycolmap.Reconstruction(str(self.out.sfm))
        stats = colmap_db.read_pair_stats(self.out.pair_stats)
        assessment = assess_model(reconstruction, stats, self.log.get("database", "camera_sources", {}),
                                  initial_cameras(self.out.database), len(listed), self.config.reliability,
                                  self.log.get("map", "registration_points"))
        data: dict[str, object] = {"status": assessment.status, "images": str(self.image_dir),
                                   "num_images": len(listed), "num_with_features": len(self.names)}
        data.update(model_statistics(reconstruction))
        registered = set(data["registered"])
        data["unregistered"] = [n for n in listed if n not in registered]
        data["failed_images"] = failed
        data["feature_warnings"] = self.log.get("extract", "feature_warnings", {})
        data["skipped_files"] = self._listing.skipped if self._listing else {}
        data["stability"] = stability = self.log.get("map", "stability", [])
        unstable = stability_warnings(stability, self.config.reliability)
        if unstable:
            assessment.status = "unreliable"
        data["status"] = assessment.status
        data["warnings"] = assessment.warnings + unstable
        data["weak_images"] = assessment.weak_images
        data["focal_uncertainty"] = {str(camera_id): round(value, 5) if math.isfinite(value) else None
                                     for camera_id, value in assessment.focal_uncertainty.items()}  # sigma_f / f
        num_models = self.log.get("map", "num_models", 1)
        if num_models > 1:
            data["warnings"].append(f"the images formed {num_models} separate models; the largest is in sfm/, "
                                    f"all of them in {self.out.models.name}/")  # relative: outputs can move
        data["pairs"] = pair_counts(stats)
        if self.config.refine.bundle_adjusts:
            data["bundle"] = self.log.get("map", "bundle", {})
        if self.ground_truth:
            data["ground_truth"], _ = ground_truth_report(reconstruction, self.ground_truth)
        data["timings"] = {**self.timings, "total": sum(self.timings.values())}
        data["weights"] = self.log.get("extract", "weights") or features_weights(self.out.features)
        data["settings"] = self.config.settings()
        data["versions"] = {"pycolmap": pycolmap.__version__, "torch": torch.__version__}
        write_json(self.out.summary, data)
        write_report_or_warn(self.out.root)
        return ReconstructionSummary(self.out.root, data, reconstruction)


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
    """Reconstruct the images of `image_dir` into `output` (resumable; see d2_sfm.reconstruct).
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

