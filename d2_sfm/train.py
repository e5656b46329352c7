"""Fine-tune D2-Net: `python -m d2_sfm.train --output DIR [options]`.

Without --megadepth the pairs are made offline from photographs shipped in installed packages:
rendered 3D scenes with depth-based correspondences (d2_sfm/training/rendered_pairs.py) mixed with
homography pairs (d2_sfm/training/synthetic_pairs.py). Checkpoints are in the official layout and
load with `--weights DIR/best.pth` everywhere d2_sfm takes weights; a finished run also writes
DIR/weights.pth (float16, the selected checkpoint) and DIR/model_card.md.

The GPU recipe (<= 10 min on one H100/H200; the recipe itself: d2_sfm/training/trainer.py), one line:
  python -m d2_sfm.train --output runs/d2_sfm_v2 --device cuda --workers 14 --batch 8 --crop-size 256
      --steps 8000 --stage2-step 2500 --max-minutes 8.5 --validate-every 500 --checkpoint-every 1000 --seed 1
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from .cli import run_cli
from .locking import output_lock
from .training.config import DATA_KINDS, TRAIN_LAYERS, TrainConfig

logger = logging.getLogger(__name__)


def main(config: TrainConfig, resume: bool = False, card: bool = True) -> Path:
    """Train (or resume) and return the path of the last checkpoint. With `card`, also export
    the selected weights (best.pth if validation ran, else last.pth) to DIR/weights.pth and write
    DIR/model_card.md."""
    from .extractor import resolve_device  # noqa: PLC0415  (torch: imported when a run starts)

    start = time.time()
    resolve_device(config.device)  # before the output folder is made
    Path(config.output).mkdir(parents=True, exist_ok=True)
    with output_lock(Path(config.output) / "train"):  # one run per output folder
        return train_and_export(config, resume, card, start)


def train_and_export(config: TrainConfig, resume: bool, card: bool, start: float) -> Path:
    from .training.model_card import write_model_card  # noqa: PLC0415  (torch)
    from .training.trainer import Trainer, export_weights  # noqa: PLC0415

    trainer = Trainer(config, resume=resume)
    last = trainer.run()
    if card:
        best = Path(config.output) / "best.pth"
        selected = best if best.is_file() else last
        weights = export_weights(selected, Path(config.output) / "weights.pth", name=Path(config.output).name,
                                 recipe=f"python -m d2_sfm.train (see model_card.md), seed {config.seed}")
        write_model_card(Path(config.output), config, trainer.history, weights,
                         "best held-out validation" if selected == best else "last step",
                         time.time() - start, config.device)
    return last


def build_parser() -> argparse.ArgumentParser:
    default = TrainConfig(output="")
    parser = argparse.ArgumentParser(prog="python -m d2_sfm.train", description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="folder for checkpoints and log.jsonl")
    parser.add_argument("--init", default=default.init, help="initial weights: a name (hed_vgg16, d2_ots, "
                        "d2_tf, ...) or a checkpoint path; ignored with --resume when DIR/last.pth exists")
    parser.add_argument("--train-layers", choices=TRAIN_LAYERS, default=default.train_layers,
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
                        help="'synthetic' (held-out rendered + homography pairs of photos no training pair "
                        "uses), a homography-sequence folder, or 'none'")
    parser.add_argument("--data", choices=DATA_KINDS, default=default.data,
                        help="training pairs without --megadepth: rendered 3D, homography, or both")
    parser.add_argument("--homography-share", type=float, default=default.homography_share)
    parser.add_argument("--stage2-step", type=int, default=default.stage2_step,
                        help="step at which stage 2 (--stage2-layers at lr * --stage2-lr-factor) starts; 0: never")
    parser.add_argument("--stage2-layers", choices=TRAIN_LAYERS, default=default.stage2_layers)
    parser.add_argument("--stage2-lr-factor", type=float, default=default.stage2_lr_factor)
    parser.add_argument("--grad-clip", type=float, default=default.grad_clip, help="max gradient norm; 0: off")
    parser.add_argument("--spread-weight", type=float, default=default.spread_weight)
    parser.add_argument("--spread-target", type=float, default=default.spread_target)
    parser.add_argument("--detach-scores", action="store_true", help="no gradient through the detection weights")
    parser.add_argument("--collapse-spread", type=float, default=default.collapse_spread)
    parser.add_argument("--collapse-patience", type=int, default=default.collapse_patience)
    parser.add_argument("--max-rollbacks", type=int, default=default.max_rollbacks)
    parser.add_argument("--no-card", action="store_true", help="skip DIR/weights.pth and DIR/model_card.md")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(output=args.output, init=args.init, train_layers=args.train_layers, steps=args.steps,
                       lr=args.lr, batch_size=args.batch, device=args.device, seed=args.seed,
                       megadepth=args.megadepth, crop_size=args.crop_size, workers=args.workers,
                       log_every=args.log_every, validate_every=args.validate_every,
                       checkpoint_every=args.checkpoint_every, validation_data=args.validation_data,
                       warp_strength=args.warp_strength, max_minutes=args.max_minutes,
                       data=args.data, homography_share=args.homography_share, stage2_step=args.stage2_step,
                       stage2_layers=args.stage2_layers, stage2_lr_factor=args.stage2_lr_factor,
                       grad_clip=args.grad_clip, spread_weight=args.spread_weight, spread_target=args.spread_target,
                       detach_scores=args.detach_scores, collapse_spread=args.collapse_spread,
                       collapse_patience=args.collapse_patience, max_rollbacks=args.max_rollbacks)


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.validation_data == "none":
        args.validation_data = None
    main(config_from_args(args), resume=args.resume, card=not args.no_card)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(cli))
