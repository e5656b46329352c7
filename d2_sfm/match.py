"""Pipeline step: match the features of image pairs into an hloc-format matches HDF5 file.

python -m d2_sfm.match --pairs PAIRS.txt --features FEATURES.h5 --output MATCHES.h5
                       [--ratio-threshold R] [--distance-threshold D] [--no-mutual] [--device cuda]
                       [--executor local|ray] [--ray-address ADDR] [--ray-gpus-per-task G]
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from collections import OrderedDict
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
from tqdm import tqdm

from .cli import run_cli
from .configs import MatcherConfig
from .executors import (ExecutorConfig, add_executor_arguments, check_ray_available, drain, executor_config_from_args,
                        in_flight_bound, ray_session, remote_function, worker_device)
from .fingerprint import settings_fingerprint
from .formats_d2net import import_d2net_if_changed
from .h5io import (H5_SUFFIXES, MATCHER, H5FormatError, atomic_h5, current_file, file_attributes, is_empty,
                   match_records, names_to_pair, open_h5, prune_incomplete, read_keypoints, remove_h5_output,
                   stored_feature_id, write_matches)
from .locking import output_lock
from .paths import check_output_path
from .datasets.formats import read_pairs, unique_pairs

if TYPE_CHECKING:  # torch: imported when matching starts, so that --help and input errors are instant
    import torch

logger = logging.getLogger(__name__)

PAIRS_PER_TASK = 32  # Ray executor: consecutive pairs per task (pairs lists group pairs by image)
DESCRIPTORS_KEPT = 64  # Ray executor: images whose descriptors stay in the object store for reuse


class DescriptorCache:
    """Reads descriptors once per image (pairs revisit images many times), checking each."""

    def __init__(self, features: Path, device: torch.device | str = "cpu", size: int = 64):
        self.file = open_h5(features, "features file")
        self.device = device  # where pairs are matched: set before the first read
        self.get = lru_cache(maxsize=size)(self._load)

    def _load(self, name: str) -> torch.Tensor:
        import torch  # noqa: PLC0415  (see TYPE_CHECKING)

        if name not in self.file or "descriptors" not in self.file[name]:
            raise H5FormatError(f"{self.file.filename} has no features for image {name!r}")
        descriptors = np.asarray(self.file[name]["descriptors"][()])  # (D, N); other tools may store anything
        if descriptors.ndim != 2 or not np.issubdtype(descriptors.dtype, np.floating):
            raise H5FormatError(f"{self.file.filename}: descriptors of {name!r} are {descriptors.dtype} "
                                f"{descriptors.shape}, expected a float (D, N) array")
        if not np.isfinite(descriptors).all():
            raise H5FormatError(f"{self.file.filename}: descriptors of {name!r} contain NaN or inf; "
                                "extract that image again")
        num_keypoints = len(read_keypoints(self.file, name))
        if descriptors.shape[1] != num_keypoints:
            raise H5FormatError(f"{self.file.filename}: {name!r} has {descriptors.shape[1]} descriptors for "
                                f"{num_keypoints} keypoints (expected descriptors of shape (D, N))")
        return torch.from_numpy(descriptors.astype(np.float32).T.copy()).to(self.device)

    def pair(self, name0: str, name1: str) -> tuple[torch.Tensor, torch.Tensor]:
        desc0, desc1 = self.get(name0), self.get(name1)
        if desc0.shape[1] != desc1.shape[1]:
            raise H5FormatError(f"{self.file.filename} mixes descriptor dimensions: {name0!r} has "
                                f"{desc0.shape[1]}, {name1!r} has {desc1.shape[1]}")
        return desc0, desc1

    def feature_id(self, name: str) -> str:
        if name not in self.file or "keypoints" not in self.file[name]:
            raise H5FormatError(f"{self.file.filename} has no features for image {name!r}")
        return stored_feature_id(self.file, name)

    def close(self) -> None:
        self.file.close()


def matcher_fingerprint(config: MatcherConfig) -> str:
    """The settings that change matches (the chunk size does not)."""
    return settings_fingerprint({k: v for k, v in dataclasses.asdict(config).items() if k != "chunk_size"})


def plan(pairs: list[tuple[str, str]], output: Path, cache: DescriptorCache, matcher: str
         ) -> tuple[list[tuple[str, str, str]], bool]:
    """The pairs to (re)match, each with "id0:id1" of its features, and whether the whole output is
    redone (other matcher settings). A stored pair is reused only if it was made by these settings
    from exactly these features."""
    stored = file_attributes(output)
    records = match_records(output)
    fresh = bool(records) and stored.get(MATCHER) != matcher
    if fresh:
        logger.info("%s was matched with other settings: matching all %d pairs again", output, len(pairs))
    todo, changed = [], []
    for name0, name1 in pairs:
        features = f"{cache.feature_id(name0)}:{cache.feature_id(name1)}"
        record = records.get(names_to_pair(name0, name1))
        if fresh or record is None:
            todo.append((name0, name1, features))
        elif record.settings != matcher or record.identity != features:
            todo.append((name0, name1, features))
            changed.append(f"{name0} {name1}")
    if changed:
        logger.info("Matching %d pair(s) again: their features were extracted again, or the pair was cut by "
                    "an interrupted run (%s%s)", len(changed), ", ".join(changed[:3]),
                    ", ..." if len(changed) > 3 else "")
    return todo, fresh


def main(pairs: Path, features: Path, output: Path, config: MatcherConfig = MatcherConfig(),
         device: str = "cpu", overwrite: bool = False, executor: ExecutorConfig = ExecutorConfig()) -> Path:
    """Match every pair of the pairs file. Resumable: a pair already in `output` is kept only if it
    was matched with the same settings from the same features; inputs are checked before anything
    is deleted or computed. `executor`: where matching runs (this process, or Ray tasks fed with
    descriptor arrays); this process alone writes `output`, the same way for both."""
    output = Path(output)
    check_ray_available(executor)
    check_output_path(output, H5_SUFFIXES, "matches file")
    if Path(features).exists() and output.exists() and output.samefile(features):
        raise H5FormatError(f"the matches output {output} is the features file; give another --output")
    listed = unique_pairs(read_pairs(pairs))
    if not listed:
        raise H5FormatError(f"pairs file {pairs} lists no pair of two different images: nothing to match")
    matcher = matcher_fingerprint(config)
    cache = DescriptorCache(features)
    try:
        check_names(listed, cache, pairs)
        device = worker_device(executor, device)  # imports torch: after the cheap checks (instant errors)
        if not executor.is_ray:  # Ray tasks get CPU arrays; the device is the workers'
            from .extractor import resolve_device  # noqa: PLC0415  (torch: after the cheap checks)

            cache.device = resolve_device(device)
        with output_lock(output):
            if overwrite:
                remove_h5_output(output)
            check_foreign(output)
            todo, fresh = plan(listed, output, cache, matcher)
            if todo or fresh:
                write_pairs(todo, output, cache, config, matcher, fresh, executor, device)
    finally:
        cache.close()
    logger.info("Matched %d new pairs into %s (%d up to date)", len(todo), output, len(listed) - len(todo))
    return output


def check_names(pairs: list[tuple[str, str]], cache: DescriptorCache, source: Path) -> None:
    """Every image of the pairs file must have features (checked before matching anything)."""
    missing = sorted({n for pair in pairs for n in pair if n not in cache.file or "keypoints" not in cache.file[n]})
    if missing:
        raise H5FormatError(f"{cache.file.filename} has no features for {len(missing)} image(s) named in {source}: "
                            f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}")


def check_foreign(output: Path) -> None:
    """Refuse to add to a matches file that d2_sfm did not write (unknown settings)."""
    if not any(str(k).startswith(MATCHER) for k in file_attributes(output)) and not is_empty(output):
        raise H5FormatError(f"{current_file(output)} holds matches not made by d2_sfm.match (no matcher "
                            "settings recorded); use another --output, or --overwrite to replace it")


def write_pairs(todo: list[tuple[str, str, str]], output: Path, cache: DescriptorCache, config: MatcherConfig,
                matcher: str, fresh: bool, executor: ExecutorConfig = ExecutorConfig(), device: str = "cpu") -> None:
    with atomic_h5(output, fresh=fresh) as handle:
        handle.attrs.update({f"matcher.{k}": ("none" if v is None else v)
                             for k, v in dataclasses.asdict(config).items()})
        handle.attrs[MATCHER] = matcher
        if executor.is_ray:
            for (name0, name1, features), (matches0, scores0) in match_on_ray(todo, cache, config, executor, device):
                write_matches(handle, name0, name1, matches0, scores0, matcher=matcher, features=features)
        else:
            from .matching import match_descriptors  # noqa: PLC0415  (torch)

            for name0, name1, features in tqdm(todo, desc="match", unit="pair", disable=not todo):
                matches0, scores0 = match_descriptors(*cache.pair(name0, name1), config)
                write_matches(handle, name0, name1, matches0.cpu().numpy(), scores0.cpu().numpy(),
                              matcher=matcher, features=features)
        prune_incomplete(handle, MATCHER, "matches0")


def match_on_ray(todo: list[tuple[str, str, str]], cache: DescriptorCache, config: MatcherConfig,
                 executor: ExecutorConfig, device: str) -> Iterator[tuple[tuple[str, str, str], tuple[Any, Any]]]:
    """(pair, (matches0, scores0)) for every pair of `todo`, as Ray tasks finish. Shards are runs of
    PAIRS_PER_TASK consecutive pairs; each image's descriptors are put in the object store once
    (while among the last DESCRIPTORS_KEPT used) and read by the tasks that need them."""
    from .distributed.tasks import match_shard  # noqa: PLC0415  (torch)

    ray = ray_session(executor)
    remote = remote_function(executor, match_shard)
    shards = [todo[start:start + PAIRS_PER_TASK] for start in range(0, len(todo), PAIRS_PER_TASK)]
    stored: OrderedDict[str, Any] = OrderedDict()

    def reference(name: str) -> Any:
        if name in stored:
            stored.move_to_end(name)
        else:
            stored[name] = ray.put(cache.get(name).numpy())  # (N, D) float32, as matched locally
            if len(stored) > DESCRIPTORS_KEPT:
                stored.popitem(last=False)  # pending tasks keep their own reference
        return stored[name]

    def submissions() -> Iterator[Any]:
        for number, shard in enumerate(shards):
            names = list(dict.fromkeys(name for name0, name1, _ in shard for name in (name0, name1)))
            for name0, name1, _ in shard:
                cache.pair(name0, name1)  # checks the descriptors before sending them
            index = {name: i for i, name in enumerate(names)}
            pairs = [(index[name0], index[name1]) for name0, name1, _ in shard]
            yield remote.remote(number, config, device, pairs, *[reference(name) for name in names])

    progress = tqdm(total=len(todo), desc="match (ray)", unit="pair", disable=not todo)
    for number, results in drain(ray, submissions(), in_flight_bound(ray, executor, 1.0)):
        yield from zip(shards[number], results)
        progress.update(len(results))
    progress.close()


def build_parser() -> argparse.ArgumentParser:
    default = MatcherConfig()
    parser = argparse.ArgumentParser(prog="python -m d2_sfm.match", description=__doc__.split("\n")[1])
    parser.add_argument("--pairs", type=Path, required=True, help="pairs file, 'name0 name1' per line")
    parser.add_argument("--features", type=Path, required=True, help="features HDF5 (hloc format)")
    parser.add_argument("--import-d2net", type=Path, metavar="IMAGES",
                        help="first convert the official <image>.d2-net files of the pairs' images, next to "
                             "the images in this folder, into --features (once; again only when they change)")
    parser.add_argument("--output", type=Path, required=True, help="matches HDF5 to write (hloc format)")
    parser.add_argument("--ratio-threshold", type=float, default=default.ratio_threshold)
    parser.add_argument("--distance-threshold", type=float, default=default.distance_threshold)
    parser.add_argument("--no-mutual", action="store_true", help="skip the mutual check")
    parser.add_argument("--chunk-size", type=int, default=default.chunk_size)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overwrite", action="store_true")
    add_executor_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> MatcherConfig:
    return replace(MatcherConfig(), ratio_threshold=args.ratio_threshold,
                   distance_threshold=args.distance_threshold, mutual_check=not args.no_mutual,
                   chunk_size=args.chunk_size)


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.import_d2net is not None:
        names = sorted({name for pair in read_pairs(args.pairs) for name in pair})
        import_d2net_if_changed(args.import_d2net, names, args.features)
    main(args.pairs, args.features, args.output, config_from_args(args), args.device, args.overwrite,
         executor_config_from_args(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(cli))
