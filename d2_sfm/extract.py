"""Pipeline step: extract D2-Net features for a folder of images into an hloc-format HDF5 file.

python -m d2_sfm.extract --images DIR --output FEATURES.h5 [--image-list FILE] [--weights NAME|PATH]
                         [--multiscale] [--max-edge N] [--max-sum-edges N] [--max-keypoints K]
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
from tqdm import tqdm

from .cli import add_extraction_arguments, extraction_config_from_args, run_cli
from .extractor import D2Extractor, ExtractionConfig
from .h5io import H5FormatError, atomic_h5, existing_names, write_features
from .images import ImageError, list_images
from .paths import resolve_inside, safe_relative_name

logger = logging.getLogger(__name__)


@dataclass
class ExtractionSummary:
    output: Path
    extracted: list[str] = field(default_factory=list)
    skipped_existing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # name -> reason
    seconds: float = 0.0

    def log(self) -> None:
        logger.info("Features in %s: %d extracted, %d already present, %d failed (%.1f s)",
                    self.output, len(self.extracted), len(self.skipped_existing), len(self.failed),
                    self.seconds)
        for name, reason in self.failed.items():
            logger.warning("Skipped %s: %s", name, reason)


def read_image_list(path: Path) -> list[str]:
    """Image names, one per line (blank lines and '#' comments ignored), relative to the image folder."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise ImageError(f"cannot read image list {path}: {error.strerror or error}") from error
    names = [safe_relative_name(line.strip(), f"{path}:{number}")
             for number, line in enumerate(lines, 1) if line.strip() and not line.startswith("#")]
    if not names:
        raise ImageError(f"image list {path} names no images")
    return names


def check_settings(output: Path, extractor: D2Extractor) -> None:
    """Refuse to append features made with other weights or settings to an existing file."""
    wanted = run_attributes(extractor)
    for candidate in (output.with_name(output.name + ".partial"), output):
        if candidate.exists():
            with h5py.File(candidate, "r") as f:
                stored = {k: f.attrs[k] for k in wanted if k in f.attrs}
            different = [f"{k}={stored[k]} (now {wanted[k]})" for k in stored if str(stored[k]) != str(wanted[k])]
            if different:
                raise H5FormatError(f"{candidate} was made with other settings: {', '.join(different)}; "
                                    "use another --output, --overwrite, or the same settings")
            return


def run_attributes(extractor: D2Extractor) -> dict[str, object]:
    return {"weights": extractor.weights.name, "weights_sha256": extractor.weights.sha256,
            **{f"config.{k}": v for k, v in extractor.config.as_attributes().items()}}


def main(image_dir: Path, output: Path, image_list: list[str] | None = None,
         weights: str | None = None, config: ExtractionConfig = ExtractionConfig(),
         half_descriptors: bool = False, overwrite: bool = False, device: str = "cpu",
         extractor: D2Extractor | None = None) -> ExtractionSummary:
    """Extract features of `image_list` (default: every image below image_dir) into `output`."""
    output = Path(output)
    names = [safe_relative_name(n) for n in image_list] if image_list else list_images(image_dir)
    if overwrite:
        for stale in (output, output.with_name(output.name + ".partial")):
            stale.unlink(missing_ok=True)
    extractor = extractor or D2Extractor(weights, config, device)
    check_settings(output, extractor)
    summary = ExtractionSummary(output)
    done = existing_names(output)
    summary.skipped_existing = [n for n in names if n in done]
    todo = [n for n in names if n not in done]
    start = time.time()
    with atomic_h5(output) as handle:
        handle.attrs.update(run_attributes(extractor))
        for name in tqdm(todo, desc="extract", unit="img", disable=not todo):
            try:
                features = extractor.extract_path(resolve_inside(image_dir, name))
            except ImageError as error:
                summary.failed[name] = str(error)
                continue
            write_features(handle, name, features.keypoints, features.descriptors, features.scores,
                           features.image_size, half_descriptors=half_descriptors)
            summary.extracted.append(name)
    summary.seconds = time.time() - start
    summary.log()
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m d2_sfm.extract", description=__doc__.split("\n")[1])
    parser.add_argument("--images", type=Path, required=True, help="image folder (searched recursively)")
    parser.add_argument("--output", type=Path, required=True, help="features HDF5 file (hloc format)")
    parser.add_argument("--image-list", type=Path, help="file with image names relative to --images")
    parser.add_argument("--half-descriptors", action="store_true", help="store descriptors as float16")
    parser.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming")
    add_extraction_arguments(parser)
    return parser


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    image_list = read_image_list(args.image_list) if args.image_list else None
    summary = main(args.images, args.output, image_list, args.weights, extraction_config_from_args(args),
                   args.half_descriptors, args.overwrite, args.device)
    if not summary.extracted and not summary.skipped_existing:
        logger.error("No image could be read: nothing extracted")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(cli))
