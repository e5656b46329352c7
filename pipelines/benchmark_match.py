"""Mutual-nearest-neighbour matching time for N x N D2-Net descriptors (512-D, unit norm).

  python pipelines/benchmark_match.py [--sizes 2000 8000 16000] [--repeats 5] [--device cpu]

Times `d2_sfm.matching.match_descriptors` (one similarity product per chunk, rows and columns
reduced from it) against the two-product form (desc0 x desc1^T, then desc1 x desc0^T), alternating,
and prints the minimum over repeats with the machine load (`uptime`).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from d2_sfm.matching import MatcherConfig, match_descriptors, nearest_neighbours  # noqa: E402


def two_products(desc0: torch.Tensor, desc1: torch.Tensor, config: MatcherConfig) -> torch.Tensor:
    matches0, _ = nearest_neighbours(desc0, desc1, config)
    matches1, _ = nearest_neighbours(desc1, desc0, config)
    back = torch.full_like(matches0, -1)
    back[matches0 >= 0] = matches1[matches0[matches0 >= 0]]
    return torch.where(back == torch.arange(len(desc0), device=desc0.device), matches0, -1)


def descriptors(count: int, generator: torch.Generator, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """desc1 random; desc0 = noisy copies of desc1 rows (so many mutual matches exist)."""
    desc1 = F.normalize(torch.randn(count, 512, generator=generator).relu(), dim=1)
    noise = 0.05 * torch.randn(count, 512, generator=generator)
    desc0 = F.normalize((desc1[torch.randperm(count, generator=generator)] + noise).relu(), dim=1)
    return desc0.to(device), desc1.to(device)


def timed(function, *args) -> tuple[float, torch.Tensor]:
    if args[0].is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = function(*args)
    if args[0].is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main(sizes: list[int], repeats: int, device: str) -> None:
    config = MatcherConfig()
    generator = torch.Generator().manual_seed(0)
    print(f"# {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    for size in sizes:
        desc0, desc1 = descriptors(size, generator, device)
        ours, reference = [], []
        for _ in range(repeats):
            seconds, (matches0, _) = timed(match_descriptors, desc0, desc1, config)
            ours.append(seconds)
            seconds, expected = timed(two_products, desc0, desc1, config)
            reference.append(seconds)
        same = torch.equal(matches0, expected)
        print(f"{size} x {size}: match_descriptors {min(ours):.3f} s (two products {min(reference):.3f} s, "
              f"{min(reference) / min(ours):.2f}x), {int((matches0 >= 0).sum())} mutual matches, "
              f"same matches: {same}", flush=True)
    print(f"# {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    main(args.sizes, args.repeats, args.device)
