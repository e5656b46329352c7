"""Fine-tune D2-Net: `python -m d2_sfm.train --output DIR [options]`.

Without --megadepth the pairs are synthetic (scikit-image's bundled photos under random
homographies and photometric changes; see d2_sfm/training/synthetic_pairs.py). Checkpoints are in
the official layout and load with `--weights DIR/best.pth` everywhere d2_sfm takes weights.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .cli import run_cli
from .training.network import TRAINABLE_LAYERS
from .training.trainer import TrainConfig, Trainer


def main(config: TrainConfig, resume: bool = False) -> Path:
    """Train (or resume) and return the path of the last checkpoint."""
    return Trainer(config, resume=resume).run()


def build_parser() -> argparse.ArgumentParser:
    default = TrainConfig(output="")
    parser = argparse.ArgumentParser(prog="python -m d2_sfm.train", description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="folder for checkpoints and log.jsonl")
    parser.add_argument("--init", default=default.init, help="initial weights: a name (hed_vgg16, d2_ots, "
                        "d2_tf, ...) or a checkpoint path; ignored with --resume when DIR/last.pth exists")
    parser.add_argument("--train-layers", choices=tuple(TRAINABLE_LAYERS), default=default.train_layers,
                        help="conv layers to train (others frozen); official: conv4_3")
    parser.add_argument("--steps", type=int, default=default.steps, help="total optimizer steps")
    parser.add_argument("--lr", type=float, default=default.lr, help="Adam learning rate")
    parser.add_argument("--batch", type=int, default=default.batch_size, help="pairs per step")
    parser.add_argument("--device", default=default.device, help="cpu or cuda")
    parser.add_argument("--resume", action="store_true", help="continue from DIR/last.pth")
    parser.add_argument("--seed", type=int, default=default.seed)
    parser.add_argument("--megadepth", default=default.megadepth,
                        help="MegaDepth root in the official preprocessed layout (scene_info/*.npz)")
    parser.add_argument("--crop-size", type=int, default=default.crop_size)
    parser.add_argument("--workers", type=int, default=default.workers, help="data loader processes")
    parser.add_argument("--log-every", type=int, default=default.log_every)
    parser.add_argument("--validate-every", type=int, default=default.validate_every)
    parser.add_argument("--checkpoint-every", type=int, default=default.checkpoint_every)
    parser.add_argument("--warp-strength", type=float, default=default.warp_strength,
                        help="synthetic pairs: geometry strength (1: rotations up to 25 deg, scale 0.7..1.4)")
    parser.add_argument("--max-minutes", type=float, default=default.max_minutes,
                        help="stop cleanly after this much training time (resume later with --resume)")
    parser.add_argument("--validation-data", default=default.validation_data,
                        help="homography sequences for validation MMA (skipped when absent)")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(output=args.output, init=args.init, train_layers=args.train_layers, steps=args.steps,
                       lr=args.lr, batch_size=args.batch, device=args.device, seed=args.seed,
                       megadepth=args.megadepth, crop_size=args.crop_size, workers=args.workers,
                       log_every=args.log_every, validate_every=args.validate_every,
                       checkpoint_every=args.checkpoint_every, validation_data=args.validation_data,
                       warp_strength=args.warp_strength, max_minutes=args.max_minutes)


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    main(config_from_args(args), resume=args.resume)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(cli))
