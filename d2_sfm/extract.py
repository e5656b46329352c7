"""Pipeline step: extract D2-Net features for a folder of images into an hloc-format HDF5 file.

python -m d2_sfm.extract --images DIR --output FEATURES.h5 [--image-list FILE] [--weights NAME|PATH]
                         [--multiscale] [--max-edge N] [--max-sum-edges N] [--max-keypoints K]
                         [--executor local|ray] [--ray-address ADDR] [--ray-gpus-per-task G]
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from tqdm import tqdm

from .cli import add_extraction_arguments, extraction_config_from_args, run_cli
from .configs import ExtractionConfig
from .executors import (ExecutorConfig, add_executor_arguments, check_ray_available, executor_config_from_args,
                        map_unordered, ray_session, worker_device)
from .fingerprint import FileStamp
from .h5io import (FEATURE_ID, H5_SUFFIXES, H5FormatError, atomic_h5, current_file, feature_records, file_attributes,
                   is_empty, prune_incomplete, remove_h5_output, remove_items, up_to_date, write_features)
from .images import ImageError, list_images_report, max_image_pixels, read_image_bytes, read_image_list
from .locking import output_lock
from .paths import check_output_path, check_pair_key_collisions, resolve_inside, safe_relative_name
from .weights import check_known as check_weights_known

if TYPE_CHECKING:  # torch: imported when extraction starts, so that --help and input errors are instant
    from .distributed.tasks import ExtractorSpec, ImageJob, ImageResult
    from .extractor import D2Extractor, Features

DESCRIPTOR_DIM = 512
# Settings that files written by d2_sfm 0.1 did not record, with the value they had then.
RECORDED_BEFORE_THEY_WERE_RECORDED = {"descriptor_dim": DESCRIPTOR_DIM, "config.precision": "fp32"}
# Zero padding gives the dense map responses near the border even on a uniform image: measured on
# uniform grey, black and white images, 8-15 keypoints, all within 35 px of the border. An image
# whose keypoints all lie in that band has no texture of its own.
PADDING_BAND = 40.0  # px

logger = logging.getLogger(__name__)


@dataclass
class ExtractionSummary:
    output: Path
    extracted: list[str] = field(default_factory=list)
    skipped_existing: list[str] = field(default_factory=list)
    redone: list[str] = field(default_factory=list)  # extracted again: the image changed, or the item was cut
    failed: dict[str, str] = field(default_factory=dict)  # name -> reason
    warnings: dict[str, str] = field(default_factory=dict)  # name -> why its features are suspect
    seconds: float = 0.0

    def log(self) -> None:
        logger.info("Features in %s: %d extracted (%d of them redone), %d up to date, %d failed, %d with "
                    "warnings (%.1f s)", self.output, len(self.extracted), len(self.redone),
                    len(self.skipped_existing), len(self.failed), len(self.warnings), self.seconds)
        for name, reason in self.failed.items():
            logger.warning("Skipped %s: %s", name, reason)
        for name, reason in self.warnings.items():
            logger.warning("Suspect features of %s: %s", name, reason)


def listed_images(image_dir: Path, summary: ExtractionSummary) -> list[str]:
    """Every usable image below `image_dir`; files skipped by the listing count as failed."""
    listing = list_images_report(image_dir)
    listing.log()
    summary.failed.update({name: f"not listed: {reason}" for name, reason in listing.skipped.items()})
    return listing.names


def check_settings(output: Path, extractor: D2Extractor | ExtractorSpec) -> None:
    """Refuse to append to features made with other weights or settings, or by another tool."""
    stored = file_attributes(output)
    if not stored and is_empty(output):  # top level only: the items are scanned once, by plan()
        return
    wanted = run_attributes(extractor)
    source = current_file(output)
    if "weights" not in stored:
        raise H5FormatError(f"{source} holds features not made by d2_sfm (no weights or settings recorded); "
                            "use another --output, or --overwrite to replace it")
    stored = {**RECORDED_BEFORE_THEY_WERE_RECORDED, **stored}
    different = [f"{k}={stored.get(k)} (now {wanted[k]})" for k in wanted if str(stored.get(k)) != str(wanted[k])]
    if different:
        raise H5FormatError(f"{source} was made with other settings: {', '.join(different)}; "
                            "use another --output, --overwrite, or the same settings")


def has_settings(output: Path, extractor: D2Extractor) -> bool:
    """Whether `output` is empty or holds features made with `extractor`'s weights and settings."""
    try:
        check_settings(output, extractor)
    except H5FormatError:
        return False
    return True


def run_attributes(extractor: D2Extractor | ExtractorSpec) -> dict[str, object]:
    return {"weights": extractor.weights.name, "weights_sha256": extractor.weights.sha256,
            "descriptor_dim": DESCRIPTOR_DIM,
            **{f"config.{k}": v for k, v in extractor.config.as_attributes().items()}}


def plan(names: list[str], image_dir: Path, output: Path) -> tuple[list[str], list[str], list[str]]:
    """Split `names` into (up to date, to extract, redone): an item is redone when it is incomplete
    or its image's content changed since it was extracted."""
    records = feature_records(output)
    done, todo, redone = [], [], []
    for name in names:
        if up_to_date(records.get(name), resolve_inside(image_dir, name)):
            done.append(name)
            continue
        todo.append(name)
        if name in records:
            redone.append(name)
    if redone:
        logger.info("Extracting %d image(s) again: changed since they were extracted, or cut by an "
                    "interrupted run (%s%s)", len(redone), ", ".join(redone[:5]), ", ..." if len(redone) > 5 else "")
    return done, todo, redone


def feature_warning(features: Features, margin: float = PADDING_BAND) -> str | None:
    """Features that exist but are suspect: none at all, or only along the image border."""
    if len(features) == 0:
        return "no keypoints (blank or textureless image?)"
    width, height = features.image_size
    if min(width, height) <= 4 * margin:  # too small to tell the border band from the inside
        return None
    x, y = features.keypoints[:, 0], features.keypoints[:, 1]
    inside = (x >= margin) & (y >= margin) & (x <= width - 1 - margin) & (y <= height - 1 - margin)
    if not inside.any():
        return f"all {len(features)} keypoints lie within {margin:.0f} px of the border (textureless image?)"
    return None


def main(image_dir: Path, output: Path, image_list: list[str] | None = None,
         weights: str | None = None, config: ExtractionConfig = ExtractionConfig(),
         half_descriptors: bool = False, overwrite: bool = False, device: str = "cpu",
         extractor: D2Extractor | None = None, executor: ExecutorConfig = ExecutorConfig()) -> ExtractionSummary:
    """Extract features of `image_list` (default: every image below image_dir) into `output`.

    Resumable: images whose features are up to date are skipped, changed images are redone.
    Inputs (names, weights, output path) are validated before anything is deleted or computed.
    `executor`: where the network runs (this process, or Ray tasks fed with the images' bytes);
    this process alone writes `output`, the same way for both.
    """
    output = Path(output)
    check_output_path(output, H5_SUFFIXES, "features file")
    max_image_pixels()  # a bad D2_SFM_MAX_IMAGE_PIXELS is one error now, not one per image
    check_ray_available(executor)
    summary = ExtractionSummary(output)
    names = [safe_relative_name(n) for n in image_list] if image_list else listed_images(image_dir, summary)
    check_pair_key_collisions(names, str(image_dir))
    if extractor is None:
        check_weights_known(weights)  # a mistyped --weights is reported before torch loads
    if executor.is_ray:
        settings: D2Extractor | ExtractorSpec = worker_spec(extractor, weights, config, device, executor)
    else:
        from .extractor import D2Extractor  # noqa: PLC0415  (torch)

        settings = extractor = extractor or D2Extractor(weights, config, device)
    start = time.time()
    with output_lock(output):
        if overwrite:
            remove_h5_output(output)
        check_settings(output, settings)
        summary.skipped_existing, todo, summary.redone = plan(names, image_dir, output)
        if todo:
            with atomic_h5(output) as handle:
                handle.attrs.update(run_attributes(settings))
                if executor.is_ray:
                    extract_on_ray(settings, executor, image_dir, todo, handle, summary, half_descriptors)
                else:
                    for name in tqdm(todo, desc="extract", unit="img"):
                        extract_one(extractor, image_dir, name, handle, summary, half_descriptors)
                remove_items(handle, summary.failed)  # no stale features of an image that became unreadable
                prune_incomplete(handle, FEATURE_ID, "keypoints")
    summary.seconds = time.time() - start
    summary.log()
    return summary


def extract_one(extractor: D2Extractor, image_dir: Path, name: str, handle, summary: ExtractionSummary,
                half_descriptors: bool) -> None:
    """Extract and write one image, recording a failure or a warning in the summary."""
    path = resolve_inside(image_dir, name)
    try:
        stamp = FileStamp.of(path)  # before reading: an image edited meanwhile is redone next time
        features = extractor.extract_path(path)
    except (ImageError, OSError) as error:
        summary.failed[name] = read_failure(path, error)
        return
    record_features(handle, name, stamp.to_text(), features, summary, half_descriptors)


def read_failure(path: Path, error: Exception) -> str:
    """The summary's reason for an image that could not be read (both executors)."""
    if isinstance(error, ImageError):
        return str(error)
    return f"cannot read image {path}: {getattr(error, 'strerror', None) or error}"


def record_features(handle, name: str, stamp: str, features: Features, summary: ExtractionSummary,
                    half_descriptors: bool) -> None:
    """Write one image's features (both executors) and note their warnings in the summary."""
    write_features(handle, name, features.keypoints, features.descriptors, features.scores,
                   features.image_size, half_descriptors=half_descriptors, source=stamp)
    summary.extracted.append(name)
    warnings = list(features.read_warnings) + [w for w in [feature_warning(features)] if w]
    if warnings:
        summary.warnings[name] = "; ".join(warnings)


# ---------------------------------------------------------------------------------------------
# Ray executor: the driver reads each image's bytes and writes the features; workers decode
# and run the network.


def worker_spec(extractor: D2Extractor | None, weights: str | None, config: ExtractionConfig, device: str,
                executor: ExecutorConfig) -> ExtractorSpec:
    """The extractor Ray workers rebuild, checked here (weights loaded and validated, precision
    resolved for the workers' device); the driver itself needs no GPU."""
    import torch  # noqa: PLC0415

    from .distributed.tasks import ExtractorSpec  # noqa: PLC0415  (torch)
    from .extractor import resolve_device, resolve_precision  # noqa: PLC0415
    from .weights import resolve as resolve_weights  # noqa: PLC0415

    if extractor is not None:
        return ExtractorSpec(extractor.weights, extractor.config, str(extractor.device))
    device = worker_device(executor, device)
    on_workers = torch.device(device) if device == "cuda" else resolve_device(device)  # no GPU needed here
    resolved = replace(config, precision=resolve_precision(config.precision, on_workers))
    return ExtractorSpec(resolve_weights(weights, validate=True), resolved, str(on_workers))


def read_jobs(image_dir: Path, todo: list[str], summary: ExtractionSummary) -> Iterator[ImageJob]:
    """Each image's bytes and stamp, read lazily (bounded memory); unreadable files are failures."""
    from .distributed.tasks import ImageJob  # noqa: PLC0415  (torch)

    max_pixels = max_image_pixels()
    for name in tqdm(todo, desc="extract (ray)", unit="img"):
        path = resolve_inside(image_dir, name)
        try:
            stamp = FileStamp.of(path)  # before reading, as extract_one
            data = read_image_bytes(path, max_pixels)
        except (ImageError, OSError) as error:
            summary.failed[name] = read_failure(path, error)
            continue
        yield ImageJob(name, str(path), stamp.to_text(), data, max_pixels)


def extract_on_ray(spec: ExtractorSpec, executor: ExecutorConfig, image_dir: Path, todo: list[str], handle,
                   summary: ExtractionSummary, half_descriptors: bool) -> None:
    """Extract `todo` with Ray tasks (one image each), writing each result as it arrives."""
    from .distributed.tasks import extract_image  # noqa: PLC0415  (torch)

    ray = ray_session(executor)
    weights_box = [ray.put(spec.weights.path.read_bytes())]  # in a list: fetched by a worker only once
    results: Iterator[ImageResult] = map_unordered(executor, extract_image, read_jobs(image_dir, todo, summary),
                                                   args=(spec, weights_box))
    for result in results:
        if result.features is None:
            summary.failed[result.name] = result.failure or "not extracted"
        else:
            record_features(handle, result.name, result.stamp, result.features, summary, half_descriptors)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m d2_sfm.extract", description=__doc__.split("\n")[1])
    parser.add_argument("--images", type=Path, required=True, help="image folder (searched recursively)")
    parser.add_argument("--output", type=Path, required=True, help="features HDF5 file (hloc format)")
    parser.add_argument("--image-list", type=Path, help="file with image names relative to --images")
    parser.add_argument("--half-descriptors", action="store_true", help="store descriptors as float16")
    parser.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming")
    add_extraction_arguments(parser)
    add_executor_arguments(parser)
    return parser


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    image_list = read_image_list(args.image_list) if args.image_list else None
    summary = main(args.images, args.output, image_list, args.weights, extraction_config_from_args(args),
                   args.half_descriptors, args.overwrite, args.device, executor=executor_config_from_args(args))
    if not summary.extracted and not summary.skipped_existing:
        logger.error("No image could be read: nothing extracted into %s", args.output)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(cli))
