"""Keypoint refinement of a features file (the library behind `d2_sfm.refine`, also used by
`triangulate` and the orchestrators): tentative tracks from the raw matches of the given pairs (at
most one keypoint per image, strongest matches first, optionally only epipolar-consistent ones),
every keypoint but each track's root aligned to the root (RefineConfig.method: photometric patches
or dense D2 features), and a new features file with the refined keypoints, everything else copied.
Its items keep the input's `feature_id` (the matches still index the same keypoints) and record the
input features, the matches file, the pairs and the settings they were refined from, so a resume
redoes exactly what changed."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..configs import RefineConfig
from ..datasets.formats import read_pairs, unique_pairs
from ..errors import ConfigError, D2SfmError
from ..extractor import resolve_device
from ..fingerprint import file_fingerprint, settings_fingerprint
from ..h5io import (FEATURE_ID, H5_SUFFIXES, atomic_h5, current_file, list_h5_names, open_h5,
                    prune_incomplete, read_keypoints, read_matches, remove_h5_output, stored_feature_id)
from ..images import read_image, resized_size
from ..locking import output_lock
from ..paths import check_output_path, resolve_inside
from ..weights import load_model
from .dense import backbone, dense_maps
from .geometry import epipolar_inliers_of_pairs
from .keypoints import adjust_keypoints
from .patches import prepare_image
from .photometric import adjust_keypoints_photometric, working_image
from .tracks import build_tracks

logger = logging.getLogger(__name__)

REFINED_FROM = "refined_from"  # item attribute: the input item's feature_id
REFINE_KEY = "refine_key"  # item attribute, written last: fingerprint of everything the item depends on


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


def check_inputs(image_dir: Path, features: Path, matches: Path, pairs: Path | Sequence[tuple[str, str]]
                 ) -> tuple[list[str], list[tuple[str, str]]]:
    """Feature names and unique pairs; every problem is one error naming the file."""
    if not Path(image_dir).is_dir():
        raise RefineError(f"image folder {image_dir} does not exist")
    listed = isinstance(pairs, (str, Path))
    for path, what in ((features, "features file"), (matches, "matches file")) + ((pairs, "pairs file"),) * listed:
        if not Path(path).is_file():
            raise RefineError(f"{what} {path} does not exist")
    names = list_h5_names(features)
    known = set(names)
    pair_list = unique_pairs(read_pairs(pairs) if listed else [tuple(pair) for pair in pairs])
    source = f"pairs file {pairs}" if listed else "the pairs to refine"
    for name0, name1 in pair_list:
        for name in (name0, name1):
            if name not in known:
                raise RefineError(f"{source}: image {name!r} has no features in {features}")
    with open_h5(matches, "matches file"):
        pass
    return names, pair_list


def input_key(config: RefineConfig, weights_sha: str | None, features: Path, matches: Path,
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
               feature_ids: dict[str, str], min_score: float, epipolar: tuple[float, np.ndarray] | None = None,
               timings: dict[str, float] | None = None) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Keypoints per image, offsets (I + 1,), match edges (E, 2) of global node ids and their scores.

    epipolar: (threshold in working pixels, (I, 2) working / original scales) to keep only the
    matches consistent with each pair's fundamental matrix; timings: gets the seconds it took."""
    index = {name: i for i, name in enumerate(names)}
    with open_h5(features, "features file") as f:
        keypoints = [read_keypoints(f, name) for name in names]
    offsets = np.concatenate([[0], np.cumsum([len(k) for k in keypoints])]).astype(np.int64)
    read = []  # (i, j, matches (n, 2), scores (n,), kept (n,)) per pair
    with open_h5(matches, "matches file") as m:
        for name0, name1 in pair_list:
            i, j = index[name0], index[name1]
            pairs, score = read_matches(m, name0, name1, (len(keypoints[i]), len(keypoints[j])),
                                        (feature_ids[name0], feature_ids[name1]))
            read.append((i, j, pairs, score, score >= min_score))
    if epipolar is not None:
        tick = time.time()
        threshold, scales = epipolar
        consistent = epipolar_inliers_of_pairs([  # threshold in original pixels
            (keypoints[i][pairs[:, 0]], keypoints[j][pairs[:, 1]],
             2 * threshold / float(scales[i].mean() + scales[j].mean()))
            for i, j, pairs, _, _ in read])
        read = [(i, j, pairs, score, keep & inliers) for (i, j, pairs, score, keep), inliers in zip(read, consistent)]
        if timings is not None:
            timings["epipolar"] = time.time() - tick
    edges = [pairs[keep] + [offsets[i], offsets[j]] for i, j, pairs, _, keep in read]
    scores = [score[keep] for _, _, _, score, keep in read]
    return (keypoints, offsets, np.concatenate(edges) if edges else np.zeros((0, 2), np.int64),
            np.concatenate(scores) if scores else np.zeros(0, np.float32))


def image_sizes(features: Path, names: list[str]) -> list[tuple[int, int]]:
    """(W, H) of every image when its features were extracted."""
    with open_h5(features, "features file") as f:
        return [tuple(int(v) for v in f[name]["image_size"][()]) for name in names]


def image_reader(image_dir: Path, features: Path, names: list[str], config: RefineConfig):
    """image index -> its RGB image resized as configured; the size is checked against the features."""
    sizes = image_sizes(features, names)

    def read(image: int) -> np.ndarray:
        path = resolve_inside(image_dir, names[image])
        rgb = read_image(path)
        width, height = rgb.shape[1], rgb.shape[0]
        if (width, height) != sizes[image]:
            raise RefineError(f"image {path} is {width}x{height} but its features in {features} were extracted "
                              f"from a {sizes[image][0]}x{sizes[image][1]} image; extract it again")
        return working_image(rgb, config.max_edge, config.max_sum_edges)[0]
    return read


def working_scales(features: Path, names: list[str], config: RefineConfig) -> np.ndarray:
    """(I, 2) working / original size per axis of every image (resized like extraction)."""
    sizes = np.array(image_sizes(features, names), np.float32).reshape(-1, 2)
    working = np.array([resized_size(int(w), int(h), config.max_edge, config.max_sum_edges) for w, h in sizes],
                       np.float32).reshape(-1, 2)
    return working / sizes


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
    sizes = image_sizes(features, names)
    read = image_reader(image_dir, features, names, config)

    def load(image: int) -> list:
        return dense_maps(network, config.layers, read(image), sizes[image])
    return load, info.sha256


def patch_loader(image_dir: Path, features: Path, names: list[str], config: RefineConfig, device: torch.device):
    """image index -> its prepared (smoothed) working image and gradients (refinement.prepare_image)."""
    read = image_reader(image_dir, features, names, config)

    def load(image: int) -> torch.Tensor:
        return prepare_image(read(image), config.patch.blur, device, config.patch.colour)
    return load, None


def refine_features_file(image_dir: Path, features: Path, matches: Path, pairs: Path | Sequence[tuple[str, str]],
                         output: Path, config: RefineConfig = RefineConfig(), device: str = "cpu",
                         overwrite: bool = False) -> RefineSummary:
    """Refine the keypoints of `features` matched in `matches` over `pairs` (a pairs file, or the
    pairs themselves) into `output`, a features file of its own (see the module docstring)."""
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
    loader = dense_loader if config.method == "features" else patch_loader
    load, weights_sha = loader(image_dir, features, names, config, torch_device)
    key = input_key(config, weights_sha, features, matches, pair_list, feature_ids)
    with output_lock(output):
        if overwrite:
            remove_h5_output(output)
        summary.skipped_existing = up_to_date_items(output, key, feature_ids)
        todo = [name for name in names if name not in set(summary.skipped_existing)]
        if todo:
            refined = compute(features, matches, names, pair_list, feature_ids, config, load, torch_device, summary)
            tick = time.time()
            write(output, features, todo, refined, names, key, feature_ids, config, weights_sha)
            summary.timings["write"] = time.time() - tick
            summary.written = todo
    summary.seconds = time.time() - start
    summary.log()
    return summary


def compute(features: Path, matches: Path, names: list[str], pair_list: list[tuple[str, str]],
            feature_ids: dict[str, str], config: RefineConfig, load, device: torch.device,
            summary: RefineSummary) -> list[np.ndarray]:
    tick = time.time()
    scales = working_scales(features, names, config)
    epipolar = (config.epipolar_threshold, scales) if config.epipolar_threshold else None
    keypoints, offsets, edges, scores = read_graph(features, matches, names, pair_list, feature_ids,
                                                   config.min_match_score, epipolar, summary.timings)
    summary.timings["graph"] = time.time() - tick - summary.timings.get("epipolar", 0.0)
    tick = time.time()
    tracks = build_tracks(edges, scores, offsets)
    summary.timings["tracks"] = time.time() - tick
    tick = time.time()
    if config.method == "features":
        result = adjust_keypoints(keypoints, tracks, offsets, load, config.solvers(), device, config.cache_mb << 20,
                                  progress=tqdm)
    else:
        result = adjust_keypoints_photometric(keypoints, tracks, offsets, scales, load, config.patch, config.affine,
                                              device, config.cache_mb << 20, progress=tqdm, timings=summary.timings)
    summary.timings["adjust"] = time.time() - tick
    summary.num_tracks = result.num_tracks
    summary.keypoints_moved = len(result.moved)
    if len(result.moved):
        summary.median_shift = float(np.median(result.moved))
        summary.max_shift = float(result.moved.max())
    return result.keypoints


def write(output: Path, features: Path, todo: list[str], refined: list[np.ndarray], names: list[str], key: str,
          feature_ids: dict[str, str], config: RefineConfig, weights_sha: str | None) -> None:
    """Copy each todo item of `features` with its keypoints replaced; the record attributes last."""
    index = {name: i for i, name in enumerate(names)}
    with open_h5(features, "features file") as source, atomic_h5(output) as handle:
        handle.attrs.update({k: v for k, v in source.attrs.items()})
        handle.attrs.update({f"refine.{k}": str(v) for k, v in config.settings().items()})
        if weights_sha:
            handle.attrs["refine.weights_sha256"] = weights_sha
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
