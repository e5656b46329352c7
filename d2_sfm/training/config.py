"""The training run's settings, importable without torch (so `python -m d2_sfm.train --help` and
option errors are instant)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import check_options

HELD_OUT = "synthetic"  # validation_data value: held-out rendered + homography pairs (no evaluation image)
DATA_KINDS = ("mixed", "rendered", "homography")
TRAIN_LAYERS = ("conv4_3", "conv4", "conv3+", "all")  # --train-layers choices (network.TRAINABLE_LAYERS)


@dataclass(frozen=True)
class TrainConfig:
    output: str  # folder for checkpoints and log.jsonl
    init: str = "hed_vgg16"  # weights name or checkpoint path (ignored when resuming)
    train_layers: str = "conv4_3"  # stage 1: conv4_3 | conv4 | conv3+ | all
    steps: int = 20000
    lr: float = 1e-4
    batch_size: int = 8
    device: str = "cpu"
    seed: int = 1
    megadepth: str | None = None  # MegaDepth root (official layout); None: synthetic pairs
    crop_size: int = 256
    workers: int = 0  # DataLoader worker processes
    log_every: int = 50
    validate_every: int = 1000
    checkpoint_every: int = 1000
    validation_data: str | None = HELD_OUT  # "synthetic", a homography-sequence folder, or None: skip
    weight_decay: float = 0.0
    warp_strength: float = 1.0  # synthetic pairs: scales rotation (25 deg), scale ratio, perspective
    max_minutes: float | None = None  # stop cleanly (validate, save) after this much training time
    data: str = "mixed"  # mixed | rendered | homography (ignored with megadepth)
    homography_share: float = 0.3  # mixed: share of homography pairs
    stage2_step: int = 0  # 0: one stage; else stage 2 starts at this step
    stage2_layers: str = "conv3+"
    stage2_lr_factor: float = 0.1
    grad_clip: float = 1.0  # max gradient norm; 0: off
    spread_weight: float = 1.0  # 0: no spread term
    spread_target: float = 0.5  # the spread term acts above this mean cosine
    detach_scores: bool = False  # True: soft-detection weights carry no gradient (descriptor-only loss)
    collapse_spread: float = 0.9
    collapse_patience: int = 2
    max_rollbacks: int = 2

    def __post_init__(self) -> None:
        check_options("training", steps=self.steps < 1, lr=not 0 < self.lr < 1, batch_size=self.batch_size < 1,
                      seed=self.seed < 0, crop_size=self.crop_size < 64 or self.crop_size % 8 != 0,
                      workers=self.workers < 0, log_every=self.log_every < 1,
                      validate_every=self.validate_every < 1, checkpoint_every=self.checkpoint_every < 1,
                      warp_strength=not self.warp_strength >= 0, max_minutes=self.max_minutes is not None
                      and not self.max_minutes > 0, homography_share=not 0 <= self.homography_share <= 1,
                      stage2_step=self.stage2_step < 0, stage2_lr_factor=not self.stage2_lr_factor > 0,
                      grad_clip=not self.grad_clip >= 0, spread_weight=not self.spread_weight >= 0,
                      collapse_spread=not 0 < self.collapse_spread <= 1, collapse_patience=self.collapse_patience < 1,
                      max_rollbacks=self.max_rollbacks < 0, weight_decay=not self.weight_decay >= 0,
                      validation_data=self.validation_data not in (None, HELD_OUT)
                      and not Path(self.validation_data).is_dir())
