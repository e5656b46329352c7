"""The training loop: data by step (reproducible, resumable), loss, logging, validation, checkpoints.

Checkpoints are in the official layout, `{"model": state_dict, ...}` (load them with
`d2_sfm.weights.load_state_dict` or `D2Extractor(weights=path)`), plus the training state:
  DIR/last.pth              latest step (model, optimizer, step, history, best score, config)
  DIR/step_<N>.pth          every `checkpoint_every` steps
  DIR/best.pth              best validation MMA@3 px on the held-out pairs (d2_sfm.training.validation)
  DIR/log.jsonl             one JSON object per logged step / validation / rollback
  DIR/weights.pth           at the end: the selected weights alone (float16, official layout)
  DIR/model_card.md         at the end: data, recipe, seed and the measured numbers
Data order depends only on (seed, step) (see ByPosition), so a resumed run sees the same pairs.

Recipe against collapse (d2_sfm_v1's first stage collapsed to one descriptor, spread 0.99):
stage 1 trains `train_layers` (default conv4_3, as officially) at `lr`; from `stage2_step` on,
`stage2_layers` train at lr * stage2_lr_factor. Gradients are clipped to norm `grad_clip`, and a
spread term, spread_weight * relu(spread - spread_target), pushes random descriptors apart when
they drift together. The spread (mean cosine of random cell pairs) is logged; a log window above
`collapse_spread` for `collapse_patience` windows in a row rolls the weights and optimizer back to
the last healthy window with half the learning rate, at most `max_rollbacks` times, then the run
stops with TrainingCollapsed (also when there is no healthy state to return to).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..detection import detect, keep_refined
from ..atomic import write_text
from ..errors import D2SfmError
from ..extractor import resolve_device
from ..model import preprocess
from ..weights import load_state_dict, resolve, save_checkpoint
from .config import DATA_KINDS, HELD_OUT, TrainConfig  # noqa: F401  (TrainConfig re-exported)
from .homography_eval import d2_features, evaluate, list_pairs
from .losses import batch_loss
from .network import D2NetTrain
from .pairs import PairBatch, collate_pairs
from .soft_detection import soft_detection_scores

logger = logging.getLogger(__name__)

VALIDATION_PAIRS = ("graffiti 1-3", "boat 1-2")  # only with an explicit --validation-data folder
SYNTHETIC_LENGTH = 100_000  # pairs per synthetic "epoch" (each drawn from (seed, epoch, index))


class TrainingError(D2SfmError, RuntimeError):
    """A run that cannot start or resume; the message names the file."""


class TrainingCollapsed(D2SfmError):
    """The descriptors collapsed (spread near 1) and rolling back did not help."""


def latest_checkpoint(output: Path) -> Path | None:
    """The checkpoint a resume continues from: last.pth, or else the newest step_<N>.pth (a run
    killed before it wrote last.pth still has those); None when there is none."""
    last = Path(output) / "last.pth"
    if last.is_file():
        return last
    steps = sorted(Path(output).glob("step_*.pth"))
    return steps[-1] if steps else None


def build_dataset(config: TrainConfig) -> torch.utils.data.Dataset:
    """MegaDepth when given; else rendered 3D pairs and/or homography pairs of the training photos
    (d2_sfm.training.photos: never a validation or evaluation image)."""
    if config.megadepth:
        from .megadepth import MegaDepthConfig, MegaDepthPairs
        return MegaDepthPairs(Path(config.megadepth), config=MegaDepthConfig(crop_size=config.crop_size),
                              seed=config.seed)
    if config.data not in DATA_KINDS:
        raise D2SfmError(f"unknown training data {config.data!r}: expected one of {', '.join(DATA_KINDS)}")
    from . import photos
    from .rendered_pairs import MixedPairs, RenderConfig, RenderedPairs
    from .synthetic_pairs import SyntheticPairs, WarpConfig
    images = photos.pool("train")
    homography = SyntheticPairs(list(images), SYNTHETIC_LENGTH, seed=config.seed,
                                warp=WarpConfig(crop_size=config.crop_size).scaled(config.warp_strength))
    if config.data == "homography":
        return homography
    rendered = RenderedPairs(images, SYNTHETIC_LENGTH, seed=config.seed,
                             config=RenderConfig(crop_size=config.crop_size))
    if config.data == "rendered":
        return rendered
    return MixedPairs(rendered, homography, config.homography_share, seed=config.seed)


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


def spread_term(dense: torch.Tensor, samples: int, generator: torch.Generator) -> torch.Tensor:
    """Mean cosine between random pairs of distinct cells' unit descriptors (differentiable);
    near 1 means collapse. hed_vgg16 starts near 0.58, d2_sfm_v1 sits near 0.05."""
    descriptors = F.normalize(dense.permute(0, 2, 3, 1).reshape(-1, dense.shape[1]), dim=1)
    first = torch.randint(len(descriptors), (samples,), generator=generator).to(dense.device)
    second = torch.randint(len(descriptors), (samples,), generator=generator).to(dense.device)
    keep = first != second
    return (descriptors[first[keep]] * descriptors[second[keep]]).sum(dim=1).mean()


def descriptor_spread(dense: torch.Tensor, samples: int, generator: torch.Generator) -> float:
    """`spread_term` as a number, without gradient."""
    return spread_term(dense.detach(), samples, generator).item()


def keypoint_count(dense: torch.Tensor) -> int:
    """Hard detections (official tests + |step| < 0.5) on one train-net map (C, h, w) after ReLU."""
    detections = detect(F.relu(dense.detach()))
    return int(keep_refined(detections).sum())


class Trainer:
    def __init__(self, config: TrainConfig, resume: bool = False) -> None:
        self.config = config
        self.output = Path(config.output)
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        self.model = D2NetTrain().to(self.device)
        self.step, self.history, self.best = 0, [], -math.inf
        last = latest_checkpoint(self.output) if resume else None
        if last is not None:
            state = self.load(last)
        else:
            if resume:
                logger.warning("No checkpoint in %s: starting from %s", self.output, config.init)
            self.model.load_state_dict(load_state_dict(resolve(config.init).path), strict=True)
            state = None
        self.stage = 0
        self.set_stage(2 if config.stage2_step and self.step >= config.stage2_step else 1)
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.rollbacks = int(state.get("rollbacks", 0)) if state is not None else 0
        self.dataset = build_dataset(config)
        self.validation = self.validation_pairs()
        self.generator = torch.Generator().manual_seed(config.seed)
        self.extractor = None
        self.healthy: dict | None = None  # weights + optimizer at the last window below collapse_spread
        self.unhealthy_windows = 0
        self.started = time.time()

    def set_stage(self, stage: int) -> None:
        """Unfreeze the stage's layers and make a fresh Adam at the stage's learning rate."""
        layers = self.config.train_layers if stage == 1 else self.config.stage2_layers
        lr = self.config.lr * (1.0 if stage == 1 else self.config.stage2_lr_factor)
        params = self.model.set_trainable(layers)
        self.optimizer = torch.optim.Adam(params, lr=lr, weight_decay=self.config.weight_decay)
        if self.stage and stage != self.stage:
            logger.info("Stage %d from step %d: training %s at lr %.2g", stage, self.step, layers, lr)
        self.stage = stage

    def load(self, path: Path) -> dict:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a checkpoint cut by a kill: zip errors, EOF, unpickling
            raise TrainingError(f"cannot resume from {path}: not a readable checkpoint "
                                f"({str(error).splitlines()[0]})") from None
        self.model.load_state_dict(load_state_dict(path), strict=True)
        self.step, self.history, self.best = int(state["step"]), list(state["history"]), float(state["best"])
        saved = state.get("config", {})
        changed = {k: (saved[k], v) for k, v in dataclasses.asdict(self.config).items()
                   if k in saved and saved[k] != v and k not in ("steps", "output", "workers", "device")}
        if changed:
            logger.warning("Resuming %s with changed settings (saved, now): %s", path, changed)
        # the log holds what the checkpoint holds: lines a killed run wrote after it are dropped
        write_text(self.output / "log.jsonl", "".join(json.dumps(entry) + "\n" for entry in self.history))
        logger.info("Resumed %s at step %d", path, self.step)
        return state

    def validation_pairs(self) -> list:
        """Held-out synthetic pairs (default), or VALIDATION_PAIRS of a homography-sequence folder
        (those are evaluation pairs: only for comparing with old runs), or none."""
        root = self.config.validation_data
        if root == HELD_OUT:
            from .validation import validation_pairs
            return validation_pairs()
        if not root or not Path(root).is_dir():
            logger.info("No validation data (%s): validation skipped", root)
            return []
        logger.warning("Validating on %s of %s: these are evaluation pairs", ", ".join(VALIDATION_PAIRS), root)
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
        scores = soft_detection_scores(dense.detach() if self.config.detach_scores else dense)
        size = len(batch.image1)
        result = batch_loss(dense[:size], dense[size:], scores[:size], scores[size:], batch.correspondences)
        if result.loss is None:
            return None
        # the cells sampled for the spread depend on (seed, step) only, so a resumed run matches
        spread = spread_term(dense, 512, torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.step))
        total = result.loss
        if self.config.spread_weight > 0:
            total = total + self.config.spread_weight * F.relu(spread - self.config.spread_target)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip if self.config.grad_clip > 0
                                                   else float("inf"))
        self.optimizer.step()
        return {"loss": result.loss.item(), "triplet_accuracy": result.triplet_accuracy,
                "valid_pairs": result.valid_pairs, "spread": spread.item(), "grad_norm": float(grad_norm),
                "keypoints": keypoint_count(dense[0])}

    def run(self) -> Path:
        self.output.mkdir(parents=True, exist_ok=True)
        window: list[dict[str, float]] = []
        skipped, start = 0, time.time()
        if self.step == 0 and self.validation:
            self.validate()
        for batch in self.batches():
            if self.config.stage2_step and self.step == self.config.stage2_step and self.stage == 1:
                self.set_stage(2)
                self.healthy = None  # a stage-1 snapshot has other trainable layers
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
                self.watch_collapse(window)
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

    def watch_collapse(self, window: list[dict[str, float]]) -> None:
        """Snapshot a healthy window; after `collapse_patience` collapsed windows roll back (lr
        halved) or, with no healthy state or rollbacks left, stop with TrainingCollapsed."""
        if not window:
            return
        spread = float(np.mean([w["spread"] for w in window]))
        if spread < self.config.collapse_spread:
            self.unhealthy_windows = 0
            self.healthy = {"model": copy.deepcopy(self.model.state_dict()),
                            "optimizer": copy.deepcopy(self.optimizer.state_dict()), "step": self.step}
            return
        self.unhealthy_windows += 1
        logger.warning("Descriptor spread %.3f >= %.2f at step %d (%d window(s) in a row)", spread,
                       self.config.collapse_spread, self.step, self.unhealthy_windows)
        if self.unhealthy_windows < self.config.collapse_patience:
            return
        if self.healthy is None or self.rollbacks >= self.config.max_rollbacks:
            self.record({"step": self.step, "event": "collapsed", "spread": spread, "rollbacks": self.rollbacks})
            raise TrainingCollapsed(f"training in {self.output} stopped at step {self.step}: descriptors collapsed "
                                    f"(spread {spread:.3f} >= {self.config.collapse_spread}) after "
                                    f"{self.rollbacks} rollback(s); best.pth and step_*.pth are unaffected")
        self.model.load_state_dict(self.healthy["model"])
        self.optimizer.load_state_dict(self.healthy["optimizer"])
        for group in self.optimizer.param_groups:
            group["lr"] *= 0.5
        self.rollbacks += 1
        self.unhealthy_windows = 0
        self.record({"step": self.step, "event": "rollback", "to_step": self.healthy["step"], "spread": spread,
                     "lr": self.optimizer.param_groups[0]["lr"]})
        logger.warning("Rolled back to the weights of step %d, lr now %.2g", self.healthy["step"],
                       self.optimizer.param_groups[0]["lr"])

    def log_window(self, window: list[dict[str, float]], skipped: int, elapsed: float) -> None:
        entry = {"step": self.step, "skipped_steps": skipped, "elapsed_s": round(elapsed, 1), "stage": self.stage}
        for key in ("loss", "triplet_accuracy", "spread", "grad_norm", "keypoints", "valid_pairs"):
            values = [w[key] for w in window if key in w]
            entry[key] = float(np.mean(values)) if values else float("nan")
        self.record(entry)
        logger.info("step %d loss %.4f acc %.3f spread %.3f kp/crop %.0f skipped %d (%.0f s)", self.step,
                    entry["loss"], entry["triplet_accuracy"], entry["spread"], entry["keypoints"], skipped, elapsed)

    def validate(self) -> float:
        from ..extractor import D2Extractor, ExtractionConfig  # the test-time net, as users run it

        if self.extractor is None:  # built once; its weights are replaced by the current ones
            self.extractor = D2Extractor(weights=self.config.init, config=ExtractionConfig(), device=self.device)
        self.extractor.model.load_state_dict(self.model.state_dict(), strict=True)
        if self.config.validation_data == HELD_OUT:
            from .validation import evaluate as evaluate_held_out
            entry = {"step": self.step, **evaluate_held_out(d2_features(self.extractor), self.validation)}
            score = entry["val_mma3"]
        else:
            results = evaluate(d2_features(self.extractor), self.validation)
            score = float(np.mean([r.mma[2] for r in results]))
            entry = {"step": self.step, "val_mma3": score,
                     "val_matches": float(np.mean([r.matches for r in results])),
                     "val_keypoints": float(np.mean([sum(r.keypoints) / 2 for r in results])),
                     **{f"val_mma3 {r.name}": r.mma[2] for r in results}}
        self.record(entry)
        logger.info("validation at step %d: MMA@3 %.3f, matches %.0f", self.step, score, entry["val_matches"])
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
                               history=self.history, best=self.best, config=dataclasses.asdict(self.config),
                               rollbacks=self.rollbacks)


def export_weights(checkpoint: Path, destination: Path, half: bool = True, **metadata: object) -> Path:
    """Write only the weights of a training checkpoint (official layout), as float16 by default
    (half the size; `load_state_dict` returns float32), plus plain metadata (str/int/float)."""
    state = load_state_dict(Path(checkpoint))
    if half:
        state = {k: v.half() for k, v in state.items()}
    return save_checkpoint(state, Path(destination), **metadata)
