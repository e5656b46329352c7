"""Images per second of the whole extraction (decode, resize, network, detection), e.g. on a GPU.

  python pipelines/benchmark_throughput.py --images DIR [--max-edge 1024] [--device cuda]
      [--weights hed_vgg16] [--count 40] [--workers 4] [--tile-size 0]

Images are decoded and resized in `--workers` background threads while the network runs. For
single and multi-scale it times the numeric variants of `--precision` (d2_sfm.configs.PRECISIONS)
over the same `--count` images (cycling through the folder), after one warm-up image: on a GPU
fp32 (TF32 off), tf32 and fp16 (autocast, channels-last); on a CPU fp32 (oneDNN) and bf16
(autocast, channels-last). For the non-fp32 variants it reports the share of fp32 keypoints found
again within 1 px at the same scale: the measurement behind `--precision auto`.

  python pipelines/benchmark_throughput.py --images ../shared/data/sfm/kermit --device cpu \
      --max-edge 640 --count 11 --workers 1 --tile-size 1600
"""
from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from d2_sfm.extractor import D2Extractor, ExtractionConfig  # noqa: E402
from d2_sfm.images import list_images, read_image, resize, resized_size  # noqa: E402
from d2_sfm.tiling import DenseNetwork  # noqa: E402

VARIANTS = {"cuda": ("fp32", "tf32", "fp16"), "cpu": ("fp32", "bf16")}


def decoded(path: Path, max_edge: int) -> np.ndarray:
    image = read_image(path)
    return resize(image, resized_size(image.shape[1], image.shape[0], max_edge, 2800))


def set_variant(extractor: D2Extractor, variant: str, tile_size: int | None) -> None:
    extractor.network = DenseNetwork(extractor.model, tile_size, variant)


def run(extractor: D2Extractor, paths: list[Path], max_edge: int, workers: int) -> tuple[float, list]:
    """Seconds for all paths (decode in background threads) and the keypoints (x, y, scale) of each."""
    results = []
    with ThreadPoolExecutor(workers) as pool:
        start = time.perf_counter()
        for image in pool.map(lambda p: decoded(p, max_edge), paths):
            keypoints = extractor.extract_network_input(image)
            results.append(torch.cat([keypoints.xy, keypoints.scales[:, None]], 1).cpu().numpy())
        seconds = time.perf_counter() - start
    return seconds, results


def agreement(reference: list[np.ndarray], other: list[np.ndarray]) -> float:
    from scipy.spatial import cKDTree

    found = total = 0
    for ref, oth in zip(reference, other):
        for scale in np.unique(ref[:, 2]):
            mine, theirs = ref[ref[:, 2] == scale, :2], oth[np.isclose(oth[:, 2], scale), :2]
            total += len(mine)
            if len(theirs):
                found += int((cKDTree(theirs).query(mine)[0] <= 1.0).sum())
    return found / max(total, 1)


def main(args: argparse.Namespace) -> None:
    folder = Path(args.images)
    names = list_images(folder)
    paths = [folder / n for n in itertools.islice(itertools.cycle(names), args.count)]
    tile_size = args.tile_size or None
    print(f"# {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"# torch {torch.__version__}, {device_name}, {len(names)} images in {folder}, max edge "
          f"{args.max_edge}, {args.count} images per run, {args.workers} decode threads, tile {tile_size}")
    for multiscale in (False, True):
        config = ExtractionConfig(multiscale=multiscale, max_edge=None, max_sum_edges=None, tile_size=tile_size)
        extractor = D2Extractor(args.weights, config, device=args.device)
        reference = None
        for variant in VARIANTS[torch.device(args.device).type]:
            set_variant(extractor, variant, tile_size)
            run(extractor, paths[:1], args.max_edge, args.workers)  # warm-up (cuDNN plans, allocator)
            seconds, keypoints = run(extractor, paths, args.max_edge, args.workers)
            reference = reference or keypoints
            per_image = np.mean([len(k) for k in keypoints])
            text = (f"{'MS' if multiscale else 'SS'} {variant}: {len(paths) / seconds:.2f} images/s "
                    f"({seconds / len(paths) * 1000:.0f} ms/image), {per_image:.0f} kp/image")
            if variant != "fp32":
                text += f", {100 * agreement(reference, keypoints):.2f}% of fp32 keypoints within 1 px"
            print(text, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", required=True)
    parser.add_argument("--max-edge", type=int, default=1024)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--weights", default="hed_vgg16")
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--tile-size", type=int, default=0, help="0: no tiling (GPU memory is ample)")
    main(parser.parse_args())
