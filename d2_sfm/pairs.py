"""Pipeline step: which image pairs to match, written as an hloc pairs file (`name0 name1` per line).

python -m d2_sfm.pairs --output PAIRS.txt (--images DIR | --features FEATURES.h5)
                       [--mode exhaustive|sequential|retrieval|file] [--window N] [--loop]
                       [--num-matched K] [--global-features GLOBAL.h5] [--input PAIRS_IN.txt]

Modes:
- exhaustive: every unordered pair (i < j), as hloc's `pairs_from_exhaustive`;
- sequential: each image with the next `window` images in name order (videos; `--loop` closes it);
- retrieval: each image with its `num_matched` most similar images by a global descriptor: GeM
  (p = 3) over D2-Net's dense conv4_3 map, L2-normalised, stored in hloc's global-features layout
  (`<name>/global_descriptor`, as `pairs_from_retrieval` reads it);
- file: a pairs file given by the user, validated (names must stay inside the image folder and have
  features when a features file is given).
Pairs are written once per unordered pair (the first order seen), without self-pairs.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from .cli import add_extraction_arguments, extraction_config_from_args, run_cli
from .datasets.formats import write_pairs
from .errors import D2SfmError
from .fingerprint import FileStamp
from .h5io import (FEATURE_ID, GLOBAL_DESCRIPTOR, atomic_h5, existing_names, feature_records, file_attributes,
                   list_h5_names, prune_incomplete, read_global_descriptors, remove_items, up_to_date,
                   write_global_descriptor)
from .locking import output_lock
from .images import ImageError, list_images, read_image, resize, resized_size
from .datasets.formats import read_pairs, unique_pairs
from .pair_selection import most_similar
from .paths import check_output_path, resolve_inside

if TYPE_CHECKING:  # torch: imported when global descriptors are computed (instant --help)
    import torch

logger = logging.getLogger(__name__)


class PairsError(D2SfmError, ValueError):
    """A pairs file or pairs request that cannot be used; the message names the file and line."""

PAIR_MODES = ("exhaustive", "sequential", "retrieval", "file")


@dataclass(frozen=True)
class PairsConfig:
    mode: str = "exhaustive"
    window: int = 5  # sequential: pair each image with the next `window` images
    loop: bool = False  # sequential: also pair the last images with the first ones
    num_matched: int = 10  # retrieval: neighbours per image
    retrieval_max_edge: int = 512  # retrieval: longest image side fed to the network
    gem_p: float = 3.0  # retrieval: generalised-mean exponent (1: average, large: max pooling)

    def __post_init__(self) -> None:
        if self.mode not in PAIR_MODES:
            raise PairsError(f"pairs mode {self.mode!r} is not one of {', '.join(PAIR_MODES)}")
        if self.window < 1 or self.num_matched < 1:
            raise PairsError("--window and --num-matched must be at least 1")

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def pairs_exhaustive(names: list[str]) -> list[tuple[str, str]]:
    return [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]


def pairs_sequential(names: list[str], window: int, loop: bool = False) -> list[tuple[str, str]]:
    """Each image with the next `window` ones (in the given order); `loop` wraps around."""
    count = len(names)
    pairs = []
    for i in range(count):
        for step in range(1, min(window, count - 1) + 1):
            if i + step >= count and not loop:
                break
            pairs.append((names[i], names[(i + step) % count]))
    return unique_pairs(pairs)


def pairs_from_similarity(names: list[str], similarity: np.ndarray, num_matched: int) -> list[tuple[str, str]]:
    """Each image with its `num_matched` most similar others (similarity (N, N), self excluded)."""
    similarity = np.array(similarity, dtype=np.float64)
    np.fill_diagonal(similarity, -np.inf)
    k = min(num_matched, len(names) - 1)
    pairs = [(names[i], names[j]) for i, order in enumerate(most_similar(similarity, k)) for j in order]
    return unique_pairs(pairs)


# ----------------------------------------------------------------------------------------------
# Global descriptors


def gem(dense: torch.Tensor, p: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling of a dense map (C, h, w) -> L2-normalised (C,)."""
    import torch  # noqa: PLC0415  (see TYPE_CHECKING)

    pooled = dense.clamp(min=eps).pow(p).mean(dim=(1, 2)).pow(1.0 / p)
    return torch.nn.functional.normalize(pooled, dim=0)


def global_descriptor(extractor, image_rgb: np.ndarray, config: PairsConfig) -> np.ndarray:
    """GeM of D2-Net's dense map for an RGB uint8 image, resized to `retrieval_max_edge`."""
    import torch  # noqa: PLC0415  (see TYPE_CHECKING)

    from .model import preprocess  # noqa: PLC0415

    height, width = image_rgb.shape[:2]
    image = resize(image_rgb, resized_size(width, height, config.retrieval_max_edge, None))
    tensor = torch.from_numpy(np.ascontiguousarray(image)).to(extractor.device).permute(2, 0, 1)[None].float()
    with torch.inference_mode():
        dense = extractor.model(preprocess(tensor, extractor.config.preprocessing))[0]
    return gem(dense, config.gem_p).cpu().numpy().astype(np.float32)


def compute_global_features(image_dir: Path, names: list[str], output: Path, extractor,
                            config: PairsConfig = PairsConfig()) -> Path:
    """Global descriptors of `names` into `output` (hloc layout; resumable, atomic). An image is
    (re)computed when it has no complete descriptor from its current content and these settings."""
    settings = {"weights": extractor.weights.name, "weights_sha256": extractor.weights.sha256,
                "pooling": f"GeM p={config.gem_p}", "max_edge": config.retrieval_max_edge}
    with output_lock(output):
        fresh = {k: str(v) for k, v in file_attributes(output).items() if k in settings} != \
            {k: str(v) for k, v in settings.items()}
        records = {} if fresh else feature_records(output, GLOBAL_DESCRIPTOR)
        todo = [n for n in names if not up_to_date(records.get(n), resolve_inside(image_dir, n))]
        if not todo:
            return Path(output)
        with atomic_h5(output, fresh=fresh) as handle:
            handle.attrs.update(settings)
            for name in tqdm(todo, desc="global descriptors", unit="img"):
                path = resolve_inside(image_dir, name)
                try:
                    stamp = FileStamp.of(path)
                    descriptor = global_descriptor(extractor, read_image(path), config)
                except (ImageError, OSError) as error:
                    logger.warning("No global descriptor for %s: %s", name, error)
                    remove_items(handle, [name])  # nor the one of its earlier, readable content
                    continue
                write_global_descriptor(handle, name, descriptor, stamp.to_text())
            prune_incomplete(handle, FEATURE_ID, GLOBAL_DESCRIPTOR)
    return Path(output)


# ----------------------------------------------------------------------------------------------
# The step


def validated_user_pairs(path: Path, names: list[str] | None) -> list[tuple[str, str]]:
    pairs = unique_pairs(read_pairs(path))
    if names is not None:
        known = set(names)
        unknown = sorted({n for pair in pairs for n in pair} - known)
        if unknown:
            raise PairsError(f"{path} names {len(unknown)} image(s) that have no features or are not in the "
                             f"image folder, e.g. {unknown[0]!r}")
    if not pairs:
        raise PairsError(f"{path} lists no image pairs")
    return pairs


def main(output: Path, names: list[str], config: PairsConfig = PairsConfig(), image_dir: Path | None = None,
         input_pairs: Path | None = None, global_features: Path | None = None, extractor=None) -> Path:
    """Write the pairs of `names` (sorted image names relative to `image_dir`) chosen by `config`.

    Retrieval reads `global_features` when it holds every name, else computes the missing
    descriptors into it (default `<output>.global.h5`) with `extractor` (a D2Extractor).
    """
    check_output_path(output, (".txt",), "pairs file")
    if config.mode == "file":
        if input_pairs is None:
            raise PairsError("pairs mode 'file' needs an input pairs file (--input)")
        pairs = validated_user_pairs(input_pairs, names)
    elif len(names) < 2:
        raise PairsError(f"{len(names)} image(s): at least 2 are needed to make pairs")
    elif config.mode == "exhaustive":
        pairs = pairs_exhaustive(names)
    elif config.mode == "sequential":
        pairs = pairs_sequential(names, config.window, config.loop)
    else:
        global_features = Path(global_features or Path(output).with_suffix(".global.h5"))
        if image_dir is not None and extractor is not None:  # (re)computes missing and changed images only
            compute_global_features(image_dir, names, global_features, extractor, config)
        elif not set(names) <= existing_names(global_features):
            raise PairsError(f"retrieval needs global descriptors ({global_features} lacks some) or the "
                             "images and weights to compute them")
        available = set(list_h5_names(global_features))
        names = [n for n in names if n in available]
        descriptors = read_global_descriptors(global_features, names)
        pairs = pairs_from_similarity(names, descriptors @ descriptors.T, config.num_matched)
    write_pairs(output, pairs)
    logger.info("Wrote %d %s pairs of %d images to %s", len(pairs), config.mode, len(names), output)
    return Path(output)


def image_names(image_dir: Path | None, features: Path | None) -> list[str]:
    """Sorted names of the images that have features (preferred) or of the image folder; with
    both, the images that have features and are still in the folder."""
    if features is not None:
        if not Path(features).is_file():
            raise PairsError(f"features file {features} does not exist")
        names = list_h5_names(features)
        if image_dir is None:
            return names
        present = set(list_images(image_dir))
        gone = [n for n in names if n not in present]
        if gone:
            logger.warning("%d image(s) of %s are no longer in %s and are not paired, e.g. %s",
                           len(gone), features, image_dir, gone[0])
        return [n for n in names if n in present]
    if image_dir is None:
        raise PairsError("give --images or --features to say which images to pair")
    return list_images(image_dir)


def build_parser() -> argparse.ArgumentParser:
    default = PairsConfig()
    parser = argparse.ArgumentParser(prog="python -m d2_sfm.pairs", description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="pairs file to write")
    parser.add_argument("--images", type=Path, help="image folder (names; retrieval reads the images)")
    parser.add_argument("--features", type=Path, help="features HDF5: pair the images that have features")
    parser.add_argument("--mode", choices=PAIR_MODES, default=default.mode)
    parser.add_argument("--window", type=int, default=default.window, help="sequential: neighbours after each image")
    parser.add_argument("--loop", action="store_true", help="sequential: wrap around (closed loops)")
    parser.add_argument("--num-matched", type=int, default=default.num_matched, help="retrieval: neighbours per image")
    parser.add_argument("--retrieval-max-edge", type=int, default=default.retrieval_max_edge)
    parser.add_argument("--global-features", type=Path, help="retrieval: global descriptors HDF5 (read or written)")
    parser.add_argument("--input", type=Path, help="file mode: the pairs file to validate and copy")
    add_extraction_arguments(parser)
    return parser


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = PairsConfig(mode=args.mode, window=args.window, loop=args.loop, num_matched=args.num_matched,
                         retrieval_max_edge=args.retrieval_max_edge)
    names = image_names(args.images, args.features)
    extractor = None
    global_features = args.global_features or Path(args.output).with_suffix(".global.h5")
    if config.mode == "retrieval" and args.images is not None and not set(names) <= existing_names(global_features):
        from .extractor import D2Extractor  # noqa: PLC0415  (torch)

        extractor = D2Extractor(args.weights, extraction_config_from_args(args), args.device)
    main(args.output, names, config, args.images, args.input, global_features, extractor)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(cli))
