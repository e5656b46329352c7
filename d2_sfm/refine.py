"""Pipeline step: featuremetric keypoint adjustment of matched D2 keypoints (Pixel-Perfect SfM's KA).

python -m d2_sfm.refine --images DIR --features F.h5 --matches M.h5 --pairs P.txt --output R.h5
                        [--layers conv3_3,conv1_2] [--bounds 2,2] [--device cuda] [--overwrite]

Tentative tracks are built from the raw matches of the listed pairs (at most one keypoint per image,
strongest matches first); in each track every keypoint but the root moves, within a bound, until the
dense early-layer D2 backbone features at it agree with the root's. The output is a features file
with the same images and datasets as the input, keypoints refined, everything else copied; its
items keep the input's `feature_id` (the matches still index the same keypoints) and record the
input features, the matches file and the settings they were refined from (resume redoes the file
when any of them changes).
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .cli import run_cli
from .datasets.formats import read_pairs, unique_pairs
from .errors import ConfigError, D2SfmError, check_options
from .extractor import resolve_device
from .fingerprint import file_fingerprint, settings_fingerprint
from .h5io import (FEATURE_ID, H5_SUFFIXES, atomic_h5, current_file, list_h5_names, open_h5,
                   prune_incomplete, read_keypoints, read_matches, remove_h5_output, stored_feature_id)
from .images import read_image, resize, resized_size
from .locking import output_lock
from .paths import check_output_path, resolve_inside
from .refinement import LAYERS, SolverConfig, adjust_keypoints, backbone, build_tracks, dense_maps
from .weights import load_model

logger = logging.getLogger(__name__)

MODES = ("none", "keypoints")
REFINED_FROM = "refined_from"  # item attribute: the input item's feature_id
REFINE_KEY = "refine_key"  # item attribute, written last: fingerprint of everything the item depends on
PERFORMANCE_ONLY = ("cache_mb", "chunk")


@dataclass(frozen=True)
class RefineConfig:
    # "none" | "keypoints". Default none, the best measured (pipelines/benchmark_accuracy.py): keypoints
    # lowers the reprojection error on every set (kermit 1.26 -> 1.14 px) but not the pose error
    # (sample scene max rotation error 0.18 -> 0.29 deg), and costs +45..80% of reconstruct's time.
    mode: str = "none"
    layers: tuple[str, ...] = ("conv3_3", "conv1_2")  # dense levels, coarse to fine
    bounds: tuple[float, ...] = (1.0, 2.0)  # largest move per axis at each level, in that level's cells
    max_edge: int | None = 1600  # the dense features' image size (resized like extraction)
    max_sum_edges: int | None = 2800
    loss_scale: float = 0.25  # Cauchy scale on descriptor distances (unit descriptors: <= 2)
    iterations: int = 10  # LM steps per level (kermit: 30 moved keypoints the same, median 3.42 vs 3.43 px)
    min_match_score: float = 0.0  # matches below this do not join tracks
    weights: str | None = None  # D2 weights for the dense features; None: those of the features file
    cache_mb: int = 2048  # dense maps kept in memory between the two passes (performance only)
    chunk: int = 8192  # keypoints aligned per batch (performance only)

    def __post_init__(self) -> None:
        check_options("refine", mode=self.mode not in MODES,
                      layers=not self.layers or any(layer not in LAYERS for layer in self.layers),
                      bounds=len(self.bounds) != len(self.layers) or any(not 0 < b <= 16 for b in self.bounds),
                      max_edge=self.max_edge is not None and self.max_edge < 16,
                      loss_scale=not self.loss_scale > 0, iterations=self.iterations < 1,
                      cache_mb=self.cache_mb < 0, chunk=self.chunk < 1)

    def solvers(self) -> list[SolverConfig]:
        return [SolverConfig(self.loss_scale, bound, self.iterations, chunk=self.chunk) for bound in self.bounds]

    def settings(self) -> dict[str, object]:
        """Everything that changes the refined keypoints (weights: the resolved name is added by main)."""
        return {k: v for k, v in asdict(self).items() if k not in PERFORMANCE_ONLY}


@dataclass
class RefineSummary:
    seconds: float
    output: Path | None = None
    num_tracks: int = 0
    keypoints_moved: int = 0  # free (non-root) track keypoints aligned
    median_shift: float = 0.0  # px, over the aligned keypoints
    max_shift: float = 0.0
    written: list[str] = field(default_factory=list)
    skipped_existing: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def log(self) -> None:
        logger.info("Refined keypoints in %s: %d tracks, %d keypoints aligned (median shift %.2f px, max %.2f px), "
                    "%d images written, %d up to date (%.1f s)", self.output, self.num_tracks, self.keypoints_moved,
                    self.median_shift, self.max_shift, len(self.written), len(self.skipped_existing), self.seconds)


class RefineError(D2SfmError, ValueError):
    """Inputs of the refinement step that do not fit together."""


def check_inputs(image_dir: Path, features: Path, matches: Path, pairs: Path
                 ) -> tuple[list[str], list[tuple[str, str]]]:
    """Feature names and unique pairs; every problem is one error naming the file."""
    if not Path(image_dir).is_dir():
        raise RefineError(f"image folder {image_dir} does not exist")
    for path, what in ((features, "features file"), (matches, "matches file"), (pairs, "pairs file")):
        if not Path(path).is_file():
            raise RefineError(f"{what} {path} does not exist")
    names = list_h5_names(features)
    known = set(names)
    pair_list = unique_pairs(read_pairs(pairs))
    for name0, name1 in pair_list:
        for name in (name0, name1):
            if name not in known:
                raise RefineError(f"pairs file {pairs} names image {name!r}, which has no features in {features}")
    with open_h5(matches, "matches file"):
        pass
    return names, pair_list


def input_key(config: RefineConfig, weights_sha: str, features: Path, matches: Path,
              pair_list: list[tuple[str, str]], feature_ids: dict[str, str]) -> str:
    return settings_fingerprint(config.settings(), weights_sha, file_fingerprint(matches), pair_list,
                                sorted(feature_ids.items()))


def up_to_date_items(output: Path, key: str, feature_ids: dict[str, str]) -> list[str]:
    current = current_file(output)
    if current is None:
        return []
    done = []
    with open_h5(current, "refined features file") as f:
        for name, identity in feature_ids.items():
            if name in f and f[name].attrs.get(REFINE_KEY) == key and f[name].attrs.get(REFINED_FROM) == identity:
                done.append(name)
    return done


def read_graph(features: Path, matches: Path, names: list[str], pair_list: list[tuple[str, str]],
               feature_ids: dict[str, str], min_score: float
               ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Keypoints per image, offsets (I + 1,), match edges (E, 2) of global node ids and their scores."""
    index = {name: i for i, name in enumerate(names)}
    with open_h5(features, "features file") as f:
        keypoints = [read_keypoints(f, name) for name in names]
    offsets = np.concatenate([[0], np.cumsum([len(k) for k in keypoints])]).astype(np.int64)
    edges, scores = [], []
    with open_h5(matches, "matches file") as m:
        for name0, name1 in pair_list:
            i, j = index[name0], index[name1]
            pairs, score = read_matches(m, name0, name1, (len(keypoints[i]), len(keypoints[j])),
                                        (feature_ids[name0], feature_ids[name1]))
            keep = score >= min_score
            edges.append(pairs[keep] + [offsets[i], offsets[j]])
            scores.append(score[keep])
    return (keypoints, offsets, np.concatenate(edges) if edges else np.zeros((0, 2), np.int64),
            np.concatenate(scores) if scores else np.zeros(0, np.float32))


def dense_loader(image_dir: Path, features: Path, names: list[str], config: RefineConfig, device: torch.device):
    """image index -> dense maps of its image, resized as configured; image sizes checked."""
    with open_h5(features, "features file") as f:
        weights = config.weights or str(f.attrs.get("weights", "")) or None
    try:
        model, info = load_model(weights, device=device)
    except D2SfmError:
        if config.weights:
            raise
        model, info = load_model(None, device=device)  # features from another tool: default weights
    network = backbone(model, config.layers)
    with open_h5(features, "features file") as f:
        sizes = [tuple(int(v) for v in f[name]["image_size"][()]) for name in names]

    def load(image: int) -> list:
        path = resolve_inside(image_dir, names[image])
        rgb = read_image(path)
        width, height = rgb.shape[1], rgb.shape[0]
        if (width, height) != sizes[image]:
            raise RefineError(f"image {path} is {width}x{height} but its features in {features} were extracted "
                              f"from a {sizes[image][0]}x{sizes[image][1]} image; extract it again")
        rgb = resize(rgb, resized_size(width, height, config.max_edge, config.max_sum_edges))
        return dense_maps(network, config.layers, rgb, (width, height))
    return load, info


def main(image_dir: Path, features: Path, matches: Path, pairs: Path, output: Path,
         config: RefineConfig = RefineConfig(), device: str = "cpu", overwrite: bool = False) -> RefineSummary:
    """Refine the matched keypoints of `features` into `output` (see the module docstring)."""
    start = time.time()
    if config.mode == "none":
        raise ConfigError("refine mode 'none' refines nothing: skip the refine step instead")
    output = check_output_path(Path(output), H5_SUFFIXES, "refined features file")
    if Path(output).resolve() == Path(features).resolve():
        raise RefineError(f"output {output} is the input features file; refined features go to another file")
    names, pair_list = check_inputs(image_dir, features, matches, pairs)
    torch_device = resolve_device(device)
    with open_h5(features, "features file") as f:
        feature_ids = {name: stored_feature_id(f, name) for name in names}
    summary = RefineSummary(0.0, output)
    load, info = dense_loader(image_dir, features, names, config, torch_device)
    key = input_key(config, info.sha256, features, matches, pair_list, feature_ids)
    with output_lock(output):
        if overwrite:
            remove_h5_output(output)
        summary.skipped_existing = up_to_date_items(output, key, feature_ids)
        todo = [name for name in names if name not in set(summary.skipped_existing)]
        if todo:
            refined = compute(features, matches, names, pair_list, feature_ids, config, load, torch_device, summary)
            write(output, features, todo, refined, names, key, feature_ids, config, info)
            summary.written = todo
    summary.seconds = time.time() - start
    summary.log()
    return summary


def compute(features: Path, matches: Path, names: list[str], pair_list: list[tuple[str, str]],
            feature_ids: dict[str, str], config: RefineConfig, load, device: torch.device,
            summary: RefineSummary) -> list[np.ndarray]:
    tick = time.time()
    keypoints, offsets, edges, scores = read_graph(features, matches, names, pair_list, feature_ids,
                                                   config.min_match_score)
    tracks = build_tracks(edges, scores, offsets)
    summary.timings["tracks"] = time.time() - tick
    tick = time.time()
    result = adjust_keypoints(keypoints, tracks, offsets, load, config.solvers(), device, config.cache_mb << 20,
                    progress=lambda it, **kw: tqdm(it, **kw))
    summary.timings["align"] = time.time() - tick
    summary.num_tracks = result.num_tracks
    summary.keypoints_moved = len(result.moved)
    if len(result.moved):
        summary.median_shift = float(np.median(result.moved))
        summary.max_shift = float(result.moved.max())
    return result.keypoints


def write(output: Path, features: Path, todo: list[str], refined: list[np.ndarray], names: list[str], key: str,
          feature_ids: dict[str, str], config: RefineConfig, info) -> None:
    """Copy each todo item of `features` with its keypoints replaced; the record attributes last."""
    index = {name: i for i, name in enumerate(names)}
    with open_h5(features, "features file") as source, atomic_h5(output) as handle:
        handle.attrs.update({k: v for k, v in source.attrs.items()})
        handle.attrs.update({f"refine.{k}": str(v) for k, v in config.settings().items()})
        handle.attrs["refine.weights_sha256"] = info.sha256
        for name in todo:
            if name in handle:
                del handle[name]
            parent = name.rsplit("/", 1)[0] if "/" in name else None
            if parent:
                handle.require_group(parent)
            source.copy(source[name], handle, name=name)
            dataset = handle[name]["keypoints"]
            dataset[...] = refined[index[name]].astype(dataset.dtype)
            handle[name].attrs[FEATURE_ID] = feature_ids[name]
            handle[name].attrs[REFINED_FROM] = feature_ids[name]
            handle[name].attrs[REFINE_KEY] = key
            handle.flush()
        prune_incomplete(handle, REFINE_KEY, "keypoints")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m d2_sfm.refine", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="image folder the features were extracted from")
    parser.add_argument("--features", type=Path, required=True, help="features HDF5 (hloc format)")
    parser.add_argument("--matches", type=Path, required=True, help="raw matches HDF5 (hloc format)")
    parser.add_argument("--pairs", type=Path, required=True, help="pairs file whose matches form the tracks")
    parser.add_argument("--output", type=Path, required=True, help="refined features HDF5")
    parser.add_argument("--mode", choices=MODES[1:], default="keypoints")
    parser.add_argument("--layers", default=",".join(RefineConfig.layers),
                        help=f"dense levels, coarse to fine, from {', '.join(LAYERS)}")
    parser.add_argument("--bounds", default=",".join(str(b) for b in RefineConfig.bounds),
                        help="largest move per axis at each level, in that level's cells")
    parser.add_argument("--max-edge", type=int, default=RefineConfig.max_edge)
    parser.add_argument("--iterations", type=int, default=RefineConfig.iterations)
    parser.add_argument("--weights", help="D2 weights for the dense features (default: the features file's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming")
    return parser


def config_from_args(args: argparse.Namespace) -> RefineConfig:
    try:
        bounds = tuple(float(b) for b in args.bounds.split(","))
    except ValueError:
        raise ConfigError(f"--bounds must be comma-separated numbers, got {args.bounds!r}") from None
    return RefineConfig(mode=args.mode, layers=tuple(args.layers.split(",")), bounds=bounds,
                        max_edge=args.max_edge or None, iterations=args.iterations, weights=args.weights)


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    main(args.images, args.features, args.matches, args.pairs, args.output, config_from_args(args), args.device,
         args.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(cli))
