"""MMA at 1..10 px and mutual-NN match counts on image pairs with ground-truth homographies.

  python pipelines/eval_homography.py --weights hed_vgg16 [--weights PATH ...] [--sift] \
      [--data ../shared/data/homography] [--pairs pass-fail|all] [--device cuda] [--json OUT] \
      [--refine [--refine-method patches,features] [--refine-layers conv3_3,conv1_2 --refine-bounds 1,2]]

Every method runs on every pair (graffiti, boat, iguazu 1->k, EVD); the summary averages the five
pass/fail pairs (graffiti 1-2, 1-3, boat 1-2, iguazu 1-3, 1-6). MMA as in D2-Net's HPatches
notebook: mutual NN on L2-normalised descriptors, share of matches within t px under the GT
homography. D2 runs single-scale with the official resizing (max edge 1600, max W+H 2800).

--refine adds, per D2 method, the same matches after pair-wise keypoint adjustment (d2_sfm.refine's
math on two-view tracks): each match is a track whose root is the image-1 keypoint, and the image-2
keypoint moves (bounded) until it sees what the root sees. Method patches (refine's default): affine
Lucas-Kanade on image patches, started from the local affine shape of the epipolar-consistent
matches around it; method features: the dense early-layer D2 features agree. --refine-method
takes several, comma-separated, to compare them in one run.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from d2_sfm.cli import run_cli  # noqa: E402
from d2_sfm.errors import D2SfmError  # noqa: E402
from d2_sfm.training.homography_eval import (PASS_FAIL_PAIRS, THRESHOLDS, HomographyPair,  # noqa: E402
                                             PairResult, d2_features, evaluate, list_pairs, mma, project,
                                             sift_features)

logger = logging.getLogger("d2_sfm.eval_homography")
SHOWN_THRESHOLDS = (1, 2, 3, 5, 10)


def main(weights: list[str], sift: bool, data: Path, pairs: str = "all", device: str = "cpu",
         multiscale: bool = False, refine: list | None = None) -> dict[str, list[PairResult]]:
    """Evaluate each method on the pairs (refine: refine.RefineConfig per refinement method to score
    as well); returns {method: results in pair order}."""
    from d2_sfm.extractor import D2Extractor, ExtractionConfig

    if not Path(data).is_dir():
        raise D2SfmError(f"homography data folder {data} does not exist")
    selected = list_pairs(Path(data))
    if pairs == "pass-fail":
        selected = [p for p in selected if p.name in PASS_FAIL_PAIRS]
    if not selected:
        raise D2SfmError(f"no homography pairs found below {data}")
    results = {}
    for name in weights:
        extractor = D2Extractor(name, ExtractionConfig(multiscale=multiscale), device=device)
        label = f"d2 {method_label(name, results)}"
        results[label] = evaluate(d2_features(extractor), selected)
        for config in refine or []:
            results[f"{label} +KA {config.method}"] = evaluate_refined(extractor, config, selected)
    if sift:
        results["sift"] = evaluate(sift_features, selected)
    return results


def evaluate_refined(extractor, config, pairs: list[HomographyPair]) -> list[PairResult]:
    """MMA of the mutual-NN matches after pair-wise keypoint adjustment (config: refine.RefineConfig)."""
    import torch

    from d2_sfm.images import read_image
    from d2_sfm.matching import mutual_nearest_neighbours
    from d2_sfm.refinement import (backbone, dense_maps, descriptors_at, prepare_image, refine_pair_keypoints,
                                   refine_query_keypoints, to_original, to_working, working_image)

    network = backbone(extractor.model, config.layers) if config.method == "features" else None
    cache: dict[Path, tuple] = {}

    def get(path: Path) -> tuple:
        """keypoints, descriptors, the refinement's view of the image, working / original scale."""
        if path not in cache:
            image = read_image(path)
            small, scale = working_image(image, config.max_edge, config.max_sum_edges)
            features = extractor.extract_array(image)
            view = (dense_maps(network, config.layers, small, (image.shape[1], image.shape[0])) if network is not None
                    else prepare_image(small, config.patch.blur, extractor.device, config.patch.colour))
            cache[path] = (features.keypoints, features.descriptors, view, scale)
        return cache[path]

    results = []
    for pair in pairs:
        (xy0, desc0, view0, scale0), (xy1, desc1, view1, scale1) = get(pair.path1), get(pair.path2)
        matches0, _ = mutual_nearest_neighbours(torch.from_numpy(desc0).float(), torch.from_numpy(desc1).float())
        index0 = np.flatnonzero(matches0.numpy() >= 0)
        index1 = matches0.numpy()[index0]
        if network is None:
            working = refine_pair_keypoints(view0, view1, to_working(xy0[index0], scale0),
                                            to_working(xy1[index1], scale1), config.patch, config.affine,
                                            config.epipolar_threshold)
            refined1 = to_original(working, scale1)
        else:
            references = [descriptors_at(m, torch.from_numpy(xy0[index0]).to(m.features.device)) for m in view0]
            refined1 = refine_query_keypoints(view1, xy1[index1], references, config.solvers())
        errors = np.linalg.norm(project(pair.homography, xy0[index0]) - refined1, axis=1)
        results.append(PairResult(pair.name, (len(xy0), len(xy1)), len(errors), mma(errors)))
    return results


def method_label(weights: str, taken: dict) -> str:
    """A weights name as is; a path as parent/file (run folders hold best.pth, last.pth), made unique."""
    path = Path(weights)
    label = f"{path.parent.name}/{path.name}" if path.is_file() and path.parent.name else weights
    while f"d2 {label}" in taken:
        label += "'"
    return label


def table(results: dict[str, list[PairResult]]) -> str:
    header = f"{'pair':<14} {'method':<26} {'kp0':>6} {'kp1':>6} {'matches':>7} " + " ".join(
        f"{'@' + str(t):>5}" for t in SHOWN_THRESHOLDS)
    lines = [header, "-" * len(header)]
    names = [r.name for r in next(iter(results.values()))]
    for index, pair in enumerate(names):
        for method, rows in results.items():
            r = rows[index]
            lines.append(f"{pair:<14} {method:<26} {r.keypoints[0]:>6} {r.keypoints[1]:>6} {r.matches:>7} "
                         + " ".join(f"{r.mma[t - 1]:>5.2f}" for t in SHOWN_THRESHOLDS))
    lines.append("")
    lines.append(f"summary over the pass/fail pairs ({', '.join(PASS_FAIL_PAIRS)}):")
    for method, rows in results.items():
        chosen = [r for r in rows if r.name in PASS_FAIL_PAIRS]
        if not chosen:
            continue
        mean = np.mean([r.mma for r in chosen], axis=0)
        lines.append(f"  {method:<26} mean matches {np.mean([r.matches for r in chosen]):>7.1f}  MMA "
                     + " ".join(f"@{t} {mean[t - 1]:.3f}" for t in SHOWN_THRESHOLDS)
                     + "  min MMA@3 " + f"{min(r.mma[2] for r in chosen):.3f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", action="append", default=None,
                        help="weights name or checkpoint path (repeatable); default: hed_vgg16")
    parser.add_argument("--sift", action="store_true", help="also evaluate OpenCV SIFT")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/homography"))
    parser.add_argument("--pairs", choices=("all", "pass-fail"), default="all")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--multiscale", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write all numbers here")
    parser.add_argument("--refine", action="store_true", help="also score D2 matches after keypoint adjustment")
    parser.add_argument("--refine-method", default=None,
                        help="refinement method(s), comma-separated: patches, features (default: refine's)")
    parser.add_argument("--refine-layers", default=None, help="dense levels, coarse to fine (default: refine's)")
    parser.add_argument("--refine-bounds", default=None, help="bound per level in its cells (default: refine's)")
    return parser


def refine_configs(args: argparse.Namespace) -> list:
    """One refine.RefineConfig per --refine-method."""
    from dataclasses import replace

    from d2_sfm.errors import ConfigError
    from d2_sfm.refine import METHODS, RefineConfig

    methods = args.refine_method.split(",") if args.refine_method else [RefineConfig.method]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"--refine-method: unknown {', '.join(unknown)} (expected some of {', '.join(METHODS)})")
    config = RefineConfig()
    if args.refine_layers:
        layers = tuple(args.refine_layers.split(","))
        config = replace(config, layers=layers, bounds=config.bounds[:1] * len(layers))
    if args.refine_bounds:
        try:
            config = replace(config, bounds=tuple(float(b) for b in args.refine_bounds.split(",")))
        except ValueError:
            raise ConfigError(f"--refine-bounds must be comma-separated numbers, got {args.refine_bounds!r}") from None
    return [replace(config, method=method) for method in methods]


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    refine = refine_configs(args) if args.refine else None
    results = main(args.weights or ["hed_vgg16"], args.sift, args.data, args.pairs, args.device, args.multiscale,
                   refine)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({m: [{"pair": r.name, "keypoints": r.keypoints, "matches": r.matches,
                                              "mma": dict(zip(THRESHOLDS, r.mma))} for r in rows]
                                         for m, rows in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(cli))
