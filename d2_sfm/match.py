"""Pipeline step: match the features of image pairs into an hloc-format matches HDF5 file.

python -m d2_sfm.match --pairs PAIRS.txt --features FEATURES.h5 --output MATCHES.h5
                       [--ratio-threshold R] [--distance-threshold D] [--no-mutual] [--device cuda]
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from .cli import run_cli
from .errors import D2SfmError
from .h5io import H5FormatError, atomic_h5, has_pair, write_matches
from .matching import MatcherConfig, match_descriptors
from .datasets.formats import read_pairs  # noqa: F401  (re-exported: one pairs reader)

logger = logging.getLogger(__name__)


class PairsError(D2SfmError, ValueError):
    """A pairs file or pairs request that cannot be used; the message names the file and line."""


def unique_pairs(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop self-pairs and symmetric duplicates, keeping the first order seen."""
    seen: set[frozenset[str]] = set()
    result = []
    for name0, name1 in pairs:
        key = frozenset((name0, name1))
        if name0 != name1 and key not in seen:
            seen.add(key)
            result.append((name0, name1))
    return result


class DescriptorCache:
    """Reads descriptors once per image (pairs revisit images many times)."""

    def __init__(self, features: Path, device: torch.device, size: int = 64):
        self.file = h5py.File(features, "r")
        self.device = device
        self.get = lru_cache(maxsize=size)(self._load)

    def _load(self, name: str) -> torch.Tensor:
        if name not in self.file:
            raise H5FormatError(f"{self.file.filename} has no features for image {name!r}")
        descriptors = self.file[name]["descriptors"][()]  # (D, N)
        return torch.from_numpy(descriptors.astype(np.float32).T.copy()).to(self.device)

    def close(self) -> None:
        self.file.close()


def main(pairs: Path, features: Path, output: Path, config: MatcherConfig = MatcherConfig(),
         device: str = "cpu", overwrite: bool = False) -> Path:
    """Match every pair of the pairs file (resumable: pairs already in `output` are skipped)."""
    output = Path(output)
    if not Path(features).is_file():
        raise H5FormatError(f"features file {features} does not exist")
    if overwrite:
        for stale in (output, output.with_name(output.name + ".partial")):
            stale.unlink(missing_ok=True)
    todo = unique_pairs(read_pairs(pairs))
    cache = DescriptorCache(features, torch.device(device))
    try:
        with atomic_h5(output) as handle:
            handle.attrs.update({f"matcher.{k}": ("none" if v is None else v)
                                 for k, v in dataclasses.asdict(config).items()})
            todo = [p for p in todo if not has_pair(handle, *p)]
            for name0, name1 in tqdm(todo, desc="match", unit="pair", disable=not todo):
                matches0, scores0 = match_descriptors(cache.get(name0), cache.get(name1), config)
                write_matches(handle, name0, name1, matches0.cpu().numpy(), scores0.cpu().numpy())
    finally:
        cache.close()
    logger.info("Matched %d new pairs into %s", len(todo), output)
    return output


def build_parser() -> argparse.ArgumentParser:
    default = MatcherConfig()
    parser = argparse.ArgumentParser(prog="python -m d2_sfm.match", description=__doc__.split("\n")[1])
    parser.add_argument("--pairs", type=Path, required=True, help="pairs file, 'name0 name1' per line")
    parser.add_argument("--features", type=Path, required=True, help="features HDF5 (hloc format)")
    parser.add_argument("--output", type=Path, required=True, help="matches HDF5 to write (hloc format)")
    parser.add_argument("--ratio-threshold", type=float, default=default.ratio_threshold)
    parser.add_argument("--distance-threshold", type=float, default=default.distance_threshold)
    parser.add_argument("--no-mutual", action="store_true", help="skip the mutual check")
    parser.add_argument("--chunk-size", type=int, default=default.chunk_size)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overwrite", action="store_true")
    return parser


def config_from_args(args: argparse.Namespace) -> MatcherConfig:
    return replace(MatcherConfig(), ratio_threshold=args.ratio_threshold,
                   distance_threshold=args.distance_threshold, mutual_check=not args.no_mutual,
                   chunk_size=args.chunk_size)


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    main(args.pairs, args.features, args.output, config_from_args(args), args.device, args.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(cli))
