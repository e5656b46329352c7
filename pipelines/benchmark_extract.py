"""Extraction speed, peak memory and keypoints: d2_sfm against the official D2-Net, on one image.

  python pipelines/benchmark_extract.py [--compare-official ../d2net_official] [--sizes 640 1024 1600]
      [--multiscale ss|ms|both] [--image PATH] [--repeats 1] [--tile-size 1600] [--weights hed_vgg16]

The image is resized once by the official rules (longest side = size, W + H <= 2800) and the same
uint8 array goes to both implementations, with the same weights file (d2_sfm's checkpoints are in
the official layout). Every run happens in a fresh subprocess, so its peak RSS is its own; for
each configuration ours and the official run one after the other (alternating which goes first
on every repeat), so machine load hits both alike. Record the load (`uptime`, printed) with the
table. DIR is a checkout of github:mihaidusmanu/d2-net placed beside the project (never commit
it); it is used unmodified, with run-time shims only (matplotlib stubbed when missing).

Columns: seconds per image (min over repeats), the network's share of our time, our time over
the network's FLOP bound at --peak-gflops, peak RSS (GiB), keypoint counts, the share of official
keypoints we reproduce within 1 px at the same pyramid scale (for multi-scale also after mapping
the official level->image ratio S/s to ours, (S-1)/(s-1)), and, when the counts per scale agree,
the largest position difference and lowest descriptor cosine keypoint by keypoint in output order.
--compare-untiled adds a run of ours without tiling and compares its keypoints with the tiled run.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from d2_sfm.extractor import MULTISCALE_SCALES, D2Extractor, ExtractionConfig  # noqa: E402
from d2_sfm.images import read_image, resize, resized_size  # noqa: E402
from d2_sfm.model import D2Net, feature_map_size  # noqa: E402
from d2_sfm.weights import resolve  # noqa: E402

DEFAULT_IMAGE = Path(__file__).resolve().parents[2] / "shared/data/sfm/sceaux_castle/images/100_7100.JPG"
PEAK_GFLOPS = 190.0  # fp32 peak of the 2-core development CPU (issue 7)


# --- workers: one extraction in this process ------------------------------------------------------

class TimedNetwork:
    """Wraps a dense-map function and adds up the seconds spent in it."""

    def __init__(self, network) -> None:
        self.network, self.seconds = network, 0.0

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        dense = self.network(image)
        self.seconds += time.perf_counter() - start
        return dense


def run_ours(image: np.ndarray, weights: Path, multiscale: bool, tile_size: int | None) -> dict:
    config = ExtractionConfig(multiscale=multiscale, max_edge=None, max_sum_edges=None, tile_size=tile_size)
    extractor = D2Extractor(weights, config)
    extractor.network = timed = TimedNetwork(extractor.network)
    start = time.perf_counter()
    keypoints = extractor.extract_network_input(image)
    return {"seconds": time.perf_counter() - start, "network_seconds": timed.seconds,
            "xy": keypoints.xy.numpy(), "scales": keypoints.scales.numpy(),
            "scores": keypoints.scores.numpy(), "descriptors": keypoints.descriptors.numpy()}


def import_official(official_dir: Path):
    """The official modules, with run-time shims only (their files stay untouched)."""
    try:
        import matplotlib.pyplot  # noqa: F401  (lib/utils.py imports it for plotting only)
    except ImportError:
        sys.modules["matplotlib"] = types.ModuleType("matplotlib")
        sys.modules["matplotlib.pyplot"] = types.ModuleType("matplotlib.pyplot")
    sys.path.insert(0, str(official_dir))
    from lib.model_test import D2Net as OfficialD2Net
    from lib.pyramid import process_multiscale
    from lib.utils import preprocess_image
    return OfficialD2Net, process_multiscale, preprocess_image


def run_official(image: np.ndarray, weights: Path, multiscale: bool, official_dir: Path) -> dict:
    OfficialD2Net, process_multiscale, preprocess_image = import_official(official_dir)
    model = OfficialD2Net(model_file=str(weights), use_relu=True, use_cuda=False)
    start = time.perf_counter()
    tensor = torch.tensor(preprocess_image(image, preprocessing="caffe")[None].astype(np.float32))
    with torch.no_grad():  # as the official extract_features.py
        keypoints, scores, descriptors = process_multiscale(
            tensor, model, scales=list(MULTISCALE_SCALES) if multiscale else [1])
    return {"seconds": time.perf_counter() - start, "network_seconds": float("nan"),
            "xy": keypoints[:, [1, 0]], "scales": keypoints[:, 2], "scores": scores,
            "descriptors": descriptors}


def worker(args: argparse.Namespace) -> None:
    image = np.load(args.input)
    multiscale = args.mode == "ms"
    if args.worker in ("ours", "untiled"):
        result = run_ours(image, args.weights, multiscale, args.tile_size if args.worker == "ours" else None)
    else:
        result = run_official(image, args.weights, multiscale, args.compare_official)
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    np.savez(args.result, **result)


# --- the driver --------------------------------------------------------------------------------------

@dataclass
class Run:
    seconds: float
    network_seconds: float
    peak_rss_gib: float
    xy: np.ndarray
    scales: np.ndarray
    descriptors: np.ndarray


def spawn(kind: str, image_file: Path, mode: str, args: argparse.Namespace) -> Run:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.npz"
        command = [sys.executable, __file__, "--worker", kind, "--input", str(image_file), "--mode", mode,
                   "--result", str(result), "--weights", str(args.weights),
                   "--tile-size", str(args.tile_size or 0)]
        if args.compare_official:
            command += ["--compare-official", str(args.compare_official)]
        subprocess.run(command, check=True)
        with np.load(result) as data:
            return Run(float(data["seconds"]), float(data["network_seconds"]), float(data["peak_rss_gib"]),
                       data["xy"], data["scales"], data["descriptors"])


def official_in_our_convention(xy: np.ndarray, scales: np.ndarray, width: int, height: int) -> np.ndarray:
    """Official level -> input mapping (size ratio S / s) replaced by ours (align_corners,
    (S - 1) / (s - 1)); differs only at scales != 1, by up to ~2 px at the far border for 0.5."""
    xy = xy.astype(np.float64).copy()
    for inverse_scale in np.unique(scales):
        rows = scales == inverse_scale
        for axis, size in ((0, width), (1, height)):
            level = int(size / inverse_scale)  # F.interpolate's floor(size * scale)
            if level > 1:
                xy[rows, axis] *= (size - 1) / (level - 1) / (size / level)
    return xy


def reproduced(ours: Run, official: Run, official_xy: np.ndarray, tolerance: float = 1.0) -> float:
    """Share of official keypoints (at official_xy) with one of ours within `tolerance` px at the
    same pyramid scale."""
    from scipy.spatial import cKDTree

    if len(official.xy) == 0:
        return float("nan")
    found = np.zeros(len(official.xy), bool)
    for scale in np.unique(official.scales):
        theirs = np.flatnonzero(official.scales == scale)
        mine = np.flatnonzero(np.isclose(ours.scales, scale))
        if len(mine):
            found[theirs] = cKDTree(ours.xy[mine]).query(official_xy[theirs])[0] <= tolerance
    return found.mean()


def in_order_difference(ours: Run, official: Run, official_xy: np.ndarray) -> tuple[float, float]:
    """Keypoint by keypoint in output order (both list detections in (scale, channel, i, j)
    order): max |dxy| in px and the lowest descriptor cosine; NaN when the counts per scale differ."""
    scales_ours = np.round(ours.scales, 3)
    scales_official = np.round(official.scales, 3)
    if not np.array_equal(scales_ours, scales_official) or len(ours.xy) == 0:
        return float("nan"), float("nan")
    cosines = np.sum(ours.descriptors * official.descriptors, axis=1)
    return float(np.abs(ours.xy - official_xy).max()), float(cosines.min())


def network_gflop(height: int, width: int, scales: tuple[float, ...]) -> float:
    """Multiply-adds x 2 of the convolutions at every pyramid level (meta tensors: no compute)."""
    model = D2Net().to("meta")
    total = 0
    def count(module, inputs, output):
        nonlocal total
        total += 2 * output.numel() * module.weight[0].numel()
    for layer in model.modules():
        if isinstance(layer, torch.nn.Conv2d):
            layer.register_forward_hook(count)
    for scale in scales:
        level_hw = (int(height * scale), int(width * scale))  # F.interpolate's floor
        if min(feature_map_size(*level_hw)) >= 1:
            model(torch.empty(1, 3, *level_hw, device="meta"))
    return total / 1e9


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def benchmark(args: argparse.Namespace) -> list[dict]:
    original = read_image(args.image)
    modes = {"ss": ["ss"], "ms": ["ms"], "both": ["ss", "ms"]}[args.multiscale]
    kinds = ["ours"] + (["official"] if args.compare_official else []) + (["untiled"] if args.compare_untiled else [])
    rows = []
    print(f"# {uptime()}  (start)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            width, height = resized_size(original.shape[1], original.shape[0], size, 2800)
            image_file = Path(tmp) / f"image{size}.npy"
            np.save(image_file, resize(original, (width, height)))
            for mode in modes:
                runs: dict[str, list[Run]] = {k: [] for k in kinds}
                for repeat in range(args.repeats):
                    for kind in (kinds if repeat % 2 == 0 else kinds[::-1]):
                        runs[kind].append(spawn(kind, image_file, mode, args))
                rows.append(summarise(runs, width, height, mode, args.peak_gflops))
                print_row(rows[-1], flush=True)
    print(f"# {uptime()}  (end)", flush=True)
    return rows


def summarise(runs: dict[str, list[Run]], width: int, height: int, mode: str, peak_gflops: float) -> dict:
    best = {k: min(v, key=lambda r: r.seconds) for k, v in runs.items()}
    ours = best["ours"]
    gflop = network_gflop(height, width, MULTISCALE_SCALES if mode == "ms" else (1.0,))
    row = {"size": f"{width}x{height}", "mode": mode, "ours_s": ours.seconds,
           "ours_all_s": [r.seconds for r in runs["ours"]], "net_share": ours.network_seconds / ours.seconds,
           "ours_rss_gib": max(r.peak_rss_gib for r in runs["ours"]), "ours_kp": len(ours.xy),
           "gflop": gflop, "over_flop_bound": ours.seconds / (gflop / peak_gflops)}
    if "untiled" in best:
        untiled = best["untiled"]
        same = len(untiled.xy) == len(ours.xy)
        row.update({"untiled_s": untiled.seconds, "untiled_rss_gib": max(r.peak_rss_gib for r in runs["untiled"]),
                    "untiled_same_count": same,
                    "untiled_max_dxy": float(np.abs(untiled.xy - ours.xy).max()) if same and len(ours.xy) else None,
                    "untiled_max_ddesc": float(np.abs(untiled.descriptors - ours.descriptors).max())
                    if same and len(ours.xy) else None})
    if "official" in best:
        official = best["official"]
        converted = official_in_our_convention(official.xy, official.scales, width, height)
        max_dxy, min_cos = in_order_difference(ours, official, converted)
        row.update({"official_s": official.seconds, "official_all_s": [r.seconds for r in runs["official"]],
                    "speedup": official.seconds / ours.seconds,
                    "official_rss_gib": max(r.peak_rss_gib for r in runs["official"]),
                    "official_kp": len(official.xy), "reproduced_1px": reproduced(ours, official, official.xy),
                    "reproduced_1px_our_convention": reproduced(ours, official, converted),
                    "in_order_max_dxy": max_dxy, "in_order_min_cos": min_cos})
    return row


def print_row(row: dict, flush: bool = True) -> None:
    text = (f"{row['size']:>10} {row['mode']}: ours {row['ours_s']:.2f}s (net {100 * row['net_share']:.0f}%, "
            f"{row['over_flop_bound']:.2f}x FLOP bound of {row['gflop']:.0f} GFLOP) "
            f"{row['ours_rss_gib']:.2f} GiB {row['ours_kp']} kp")
    if "official_s" in row:
        text += (f" | official {row['official_s']:.2f}s {row['official_rss_gib']:.2f} GiB "
                 f"{row['official_kp']} kp | speed-up {row['speedup']:.2f}x, reproduced "
                 f"{100 * row['reproduced_1px']:.2f}% within 1 px")
        if row["mode"] == "ms":
            text += f" ({100 * row['reproduced_1px_our_convention']:.2f}% in our level->image convention)"
        text += (f"; in order: max |dxy| {row['in_order_max_dxy']:.2g} px, min desc cos "
                 f"{row['in_order_min_cos']:.7f}")
    if "untiled_s" in row:
        text += (f" | untiled {row['untiled_s']:.2f}s {row['untiled_rss_gib']:.2f} GiB, same keypoints: "
                 f"{row['untiled_same_count']} (max |dxy| {row['untiled_max_dxy']}, max |ddesc| "
                 f"{row['untiled_max_ddesc']})")
    print(text, flush=flush)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare-official", type=Path, help="checkout of github:mihaidusmanu/d2-net")
    parser.add_argument("--sizes", type=int, nargs="+", default=[640, 1024, 1600], help="longest image side")
    parser.add_argument("--multiscale", choices=("ss", "ms", "both"), default="both")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration (min is reported)")
    parser.add_argument("--compare-untiled", action="store_true",
                        help="also run ours without tiling and compare its keypoints with the tiled run")
    parser.add_argument("--tile-size", type=int, default=ExtractionConfig().tile_size, help="0: no tiling")
    parser.add_argument("--weights", default="hed_vgg16", help="weights name or checkpoint path")
    parser.add_argument("--peak-gflops", type=float, default=PEAK_GFLOPS)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--worker", choices=("ours", "official", "untiled"), help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("ss", "ms"), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if not args.image.is_file():
        raise SystemExit(f"image {args.image} not found; pass --image PATH")
    if args.compare_official and not (args.compare_official / "lib" / "pyramid.py").is_file():
        raise SystemExit(f"{args.compare_official} is not a checkout of github:mihaidusmanu/d2-net")
    args.weights = resolve(args.weights).path
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, weights {args.weights}, "
          f"tile size {args.tile_size}, image {args.image}")
    rows = benchmark(args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
