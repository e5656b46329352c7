"""Shared pieces of the command-line entry points: logging set-up, error reporting, options."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from .errors import D2SfmError
from .extractor import ExtractionConfig

logger = logging.getLogger("d2_sfm")


def run_cli(cli: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Configure logging, run `cli`, and turn user-facing errors into one line and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s %(levelname)s] %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        return cli(argv)
    except D2SfmError as error:
        logger.error("%s", error)
        return 2
    except KeyboardInterrupt:
        logger.error("Interrupted: finished steps and written items are kept; run again to resume")
        return 130


def add_extraction_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that extracts features (defaults from ExtractionConfig)."""
    default = ExtractionConfig()
    group = parser.add_argument_group("D2-Net features")
    group.add_argument("--weights", default=None,
                       help="d2_tf, d2_ots, d2_tf_no_phototourism (downloaded), hed_vgg16 (offline), "
                            "or a checkpoint path; default: d2_tf if available, else hed_vgg16")
    group.add_argument("--multiscale", action="store_true", help="image pyramid at scales 0.5, 1, 2")
    group.add_argument("--max-edge", type=int, default=default.max_edge, help="longest image side (px)")
    group.add_argument("--max-sum-edges", type=int, default=default.max_sum_edges, help="max width + height (px)")
    group.add_argument("--max-keypoints", type=int, default=default.max_keypoints,
                       help="keep the K best-scoring keypoints per image")
    group.add_argument("--preprocessing", choices=("caffe", "torch"), default=default.preprocessing)
    group.add_argument("--tile-size", type=int, default=default.tile_size,
                       help="run the network in tiles of this many px per side (exact; bounds memory)")
    group.add_argument("--half", action="store_true", help="CUDA only: float16 network (faster, not bit-exact)")
    group.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def extraction_config_from_args(args: argparse.Namespace) -> ExtractionConfig:
    return ExtractionConfig(multiscale=args.multiscale, max_edge=args.max_edge,
                            max_sum_edges=args.max_sum_edges, max_keypoints=args.max_keypoints,
                            preprocessing=args.preprocessing, tile_size=args.tile_size or None,
                            half=args.half)
