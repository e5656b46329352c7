"""The training loop: data by step (reproducible, resumable), loss, logging, validation, checkpoints.

Checkpoints are in the official layout, `{"model": state_dict, ...}` (load them with
`d2_sfm.weights.load_state_dict` or `D2Extractor(weights=path)`), plus the training state:
  DIR/last.pth              latest step (model, optimizer, step, history, best score, config)
  DIR/step_<N>.pth          every `checkpoint_every` steps
  DIR/best.pth              best validation MMA@3 px on the held-out homography pairs
  DIR/log.jsonl             one JSON object per logged step / validation
Data order depends only on (seed, step) (see ByPosition), so a resumed run sees the same pairs.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..detection import detect, keep_refined
from ..model import preprocess
from ..weights import load_state_dict, resolve, save_checkpoint
from .homography_eval import d2_features, evaluate, list_pairs
from .losses import batch_loss
from .network import D2NetTrain
from .pairs import PairBatch, collate_pairs
from .soft_detection import soft_detection_scores

logger = logging.getLogger(__name__)

VALIDATION_PAIRS = ("graffiti 1-3", "boat 1-2")  # held-out real pairs used to select checkpoints
SYNTHETIC_LENGTH = 100_000  # pairs per synthetic "epoch" (each drawn from (seed, epoch, index))


@dataclass(frozen=True)
class TrainConfig:
    output: str  # folder for checkpoints and log.jsonl
    init: str = "hed_vgg16"  # weights name or checkpoint path (ignored when resuming)
    train_layers: str = "conv3+"  # conv4_3 | conv4 | conv3+ | all
    steps: int = 20000
    lr: float = 3e-5
    batch_size: int = 8
    device: str = "cpu"
    seed: int = 1
    megadepth: str | None = None  # MegaDepth root (official layout); None: synthetic pairs
    crop_size: int = 256
    workers: int = 0  # DataLoader worker processes
    log_every: int = 50
    validate_every: int = 1000
    checkpoint_every: int = 1000
    validation_data: str | None = "../shared/data/homography"  # held-out sequences; None or absent: skip
    weight_decay: float = 0.0
    warp_strength: float = 1.0  # synthetic pairs: scales rotation (25 deg), scale ratio, perspective
    max_minutes: float | None = None  # stop cleanly (validate, save) after this much training time


def build_dataset(config: TrainConfig) -> torch.utils.data.Dataset:
    if config.megadepth:
        from .megadepth import MegaDepthConfig, MegaDepthPairs
        return MegaDepthPairs(Path(config.megadepth), config=MegaDepthConfig(crop_size=config.crop_size),
                              seed=config.seed)
    from .synthetic_pairs import SyntheticPairs, WarpConfig, load_source_photos
    return SyntheticPairs(load_source_photos(), SYNTHETIC_LENGTH, seed=config.seed,
                          warp=WarpConfig(crop_size=config.crop_size).scaled(config.warp_strength))


class ByPosition(torch.utils.data.Dataset):
    """Position n of the run's pair stream -> pair `order_e[n mod L]` of epoch e = n // L, where
    order_e is a permutation seeded by (seed, e) and L the dataset's length per epoch. The stream
    is a pure function of the seed, so a resumed run sees the same pairs as an uninterrupted one.
    The wrapped dataset must offer `item(epoch, index)`."""

    def __init__(self, dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed
        self.orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return 2 ** 62

    def __getitem__(self, position: int):
        epoch, offset = divmod(position, len(self.dataset))
        if epoch not in self.orders:
            self.orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))}
        return self.dataset.item(epoch, int(self.orders[epoch][offset]))


class StepBatches(torch.utils.data.Sampler):
    """Stream positions of steps start..stop-1, batch_size per step."""

    def __init__(self, batch_size: int, start: int, stop: int) -> None:
        self.batch_size, self.start, self.stop = batch_size, start, stop

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield list(range(step * self.batch_size, (step + 1) * self.batch_size))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def descriptor_spread(dense: torch.Tensor, samples: int, generator: torch.Generator) -> float:
    """Mean cosine between random pairs of distinct cells' unit descriptors; near 1 means collapse."""
    descriptors = F.normalize(dense.detach().permute(0, 2, 3, 1).reshape(-1, dense.shape[1]), dim=1)
    first = torch.randint(len(descriptors), (samples,), generator=generator).to(dense.device)
    second = torch.randint(len(descriptors), (samples,), generator=generator).to(dense.device)
    keep = first != second
    return (descriptors[first[keep]] * descriptors[second[keep]]).sum(dim=1).mean().item()


def keypoint_count(dense: torch.Tensor) -> int:
    """Hard detections (official tests + |step| < 0.5) on one train-net map (C, h, w) after ReLU."""
    detections = detect(F.relu(dense.detach()))
    return int(keep_refined(detections).sum())


class Trainer:
    def __init__(self, config: TrainConfig, resume: bool = False) -> None:
        self.config = config
        self.output = Path(config.output)
        self.device = torch.device(config.device)
        torch.manual_seed(config.seed)
        self.model = D2NetTrain().to(self.device)
        self.step, self.history, self.best = 0, [], -math.inf
        last = self.output / "last.pth"
        if resume and last.is_file():
            state = self.load(last)
        else:
            if resume:
                logger.warning("No checkpoint at %s: starting from %s", last, config.init)
            self.model.load_state_dict(load_state_dict(resolve(config.init).path), strict=True)
            state = None
        params = self.model.set_trainable(config.train_layers)
        self.optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.dataset = build_dataset(config)
        self.validation = self.validation_pairs()
        self.generator = torch.Generator().manual_seed(config.seed)
        self.extractor = None

    def load(self, path: Path) -> dict:
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(load_state_dict(path), strict=True)
        self.step, self.history, self.best = int(state["step"]), list(state["history"]), float(state["best"])
        saved = state.get("config", {})
        changed = {k: (saved[k], v) for k, v in dataclasses.asdict(self.config).items()
                   if k in saved and saved[k] != v and k not in ("steps", "output", "workers", "device")}
        if changed:
            logger.warning("Resuming %s with changed settings (saved, now): %s", path, changed)
        logger.info("Resumed %s at step %d", path, self.step)
        return state

    def validation_pairs(self) -> list:
        root = self.config.validation_data
        if not root or not Path(root).is_dir():
            logger.info("No validation data (%s): validation skipped", root)
            return []
        return [p for p in list_pairs(Path(root)) if p.name in VALIDATION_PAIRS]

    def batches(self):
        sampler = StepBatches(self.config.batch_size, self.step, self.config.steps)
        return torch.utils.data.DataLoader(ByPosition(self.dataset, self.config.seed), batch_sampler=sampler, collate_fn=collate_pairs,
                                           num_workers=self.config.workers,
                                           persistent_workers=False, pin_memory=self.device.type == "cuda")

    def train_step(self, batch: PairBatch) -> dict[str, float] | None:
        batch = batch.to(self.device)
        images = preprocess(torch.cat([batch.image1, batch.image2]), "caffe")
        dense = self.model(images)
        scores = soft_detection_scores(dense)
        size = len(batch.image1)
        result = batch_loss(dense[:size], dense[size:], scores[:size], scores[size:], batch.correspondences)
        if result.loss is None:
            return None
        self.optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        self.optimizer.step()
        return {"loss": result.loss.item(), "triplet_accuracy": result.triplet_accuracy,
                "valid_pairs": result.valid_pairs, "spread": descriptor_spread(dense, 512, self.generator),
                "keypoints": keypoint_count(dense[0])}

    def run(self) -> Path:
        self.output.mkdir(parents=True, exist_ok=True)
        window: list[dict[str, float]] = []
        skipped, start = 0, time.time()
        if self.step == 0 and self.validation:
            self.validate()
        for batch in self.batches():
            stats = self.train_step(batch)
            self.step += 1
            out_of_time = self.config.max_minutes is not None and time.time() - start > 60 * self.config.max_minutes
            if stats is None:
                skipped += 1
            else:
                window.append(stats)
            last = out_of_time or self.step == self.config.steps
            if self.step % self.config.log_every == 0 or last:
                self.log_window(window, skipped, time.time() - start)
                window, skipped = [], 0
            if self.validation and (self.step % self.config.validate_every == 0 or last):
                self.validate()
            if self.step % self.config.checkpoint_every == 0:
                self.save(self.output / f"step_{self.step:06d}.pth")
            if out_of_time:
                logger.info("Time budget of %s min used up at step %d", self.config.max_minutes, self.step)
                break
        self.save(self.output / "last.pth")
        return self.output / "last.pth"

    def log_window(self, window: list[dict[str, float]], skipped: int, elapsed: float) -> None:
        entry = {"step": self.step, "skipped_steps": skipped, "elapsed_s": round(elapsed, 1)}
        for key in ("loss", "triplet_accuracy", "spread", "keypoints", "valid_pairs"):
            values = [w[key] for w in window]
            entry[key] = float(np.mean(values)) if values else float("nan")
        self.record(entry)
        logger.info("step %d loss %.4f acc %.3f spread %.3f kp/crop %.0f skipped %d (%.0f s)", self.step,
                    entry["loss"], entry["triplet_accuracy"], entry["spread"], entry["keypoints"], skipped, elapsed)

    def validate(self) -> float:
        from ..extractor import D2Extractor, ExtractionConfig  # the test-time net, as users run it

        if self.extractor is None:  # built once; its weights are replaced by the current ones
            self.extractor = D2Extractor(weights=self.config.init, config=ExtractionConfig(), device=self.device)
        self.extractor.model.load_state_dict(self.model.state_dict(), strict=True)
        results = evaluate(d2_features(self.extractor), self.validation)
        score = float(np.mean([r.mma[2] for r in results]))
        entry = {"step": self.step, "val_mma3": score,
                 "val_matches": float(np.mean([r.matches for r in results])),
                 "val_keypoints": float(np.mean([sum(r.keypoints) / 2 for r in results])),
                 **{f"val_mma3 {r.name}": r.mma[2] for r in results}}
        self.record(entry)
        logger.info("validation at step %d: MMA@3 %.3f, matches %.0f, keypoints %.0f", self.step, score,
                    entry["val_matches"], entry["val_keypoints"])
        if score > self.best:
            self.best = score
            self.save(self.output / "best.pth")
        return score

    def record(self, entry: dict) -> None:
        self.history.append(entry)
        with open(self.output / "log.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")

    def save(self, path: Path) -> Path:
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        return save_checkpoint(state, path, step=self.step, optimizer=self.optimizer.state_dict(),
                               history=self.history, best=self.best, config=dataclasses.asdict(self.config))


def export_weights(checkpoint: Path, destination: Path, half: bool = True, **metadata: object) -> Path:
    """Write only the weights of a training checkpoint (official layout), as float16 by default
    (half the size; `load_state_dict` returns float32), plus plain metadata (str/int/float)."""
    state = load_state_dict(Path(checkpoint))
    if half:
        state = {k: v.half() for k, v in state.items()}
    return save_checkpoint(state, Path(destination), **metadata)
