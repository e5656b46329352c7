"""The model card written beside every finished training run (DIR/model_card.md).

It records what a reader needs to trust or reproduce the weights: the data (kinds, photos and
their licences), the recipe (every TrainConfig field), the seed, the machine, and the numbers the
run measured (loss, triplet accuracy and descriptor spread per log window, held-out validation,
rollbacks), plus the SHA-256 of the exported weights.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import platform
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_section(config) -> list[str]:
    from . import photos
    if config.megadepth:
        return [f"MegaDepth, official preprocessed layout, root `{config.megadepth}`."]
    mix = (f" ({config.homography_share:.0%} homography pairs, the rest rendered 3D pairs)"
           if config.data == "mixed" else "")
    lines = [f"Kind: `{config.data}`{mix}, crops {config.crop_size} px.",
             "Rendered 3D pairs: `d2_sfm/training/rendered_pairs.py` (random photo-textured sites, two cameras, "
             "correspondences from depth + poses with the MegaDepth occlusion test, one-sided lighting/night/blur/"
             "noise/JPEG change). Homography pairs: `d2_sfm/training/synthetic_pairs.py`.",
             "", "Training photographs (none from an evaluation set; validation photos held out):", ""]
    lines += [f"- {line}" for line in photos.licence_lines("train")]
    lines += ["", "Validation photographs (never in a training pair):", ""]
    lines += [f"- {line}" for line in photos.licence_lines("validation")]
    return lines


def numbers_section(history: list[dict]) -> list[str]:
    windows = [h for h in history if "loss" in h]
    validations = [h for h in history if "val_mma3" in h]
    events = [h for h in history if "event" in h]
    lines = ["| step | stage | loss | triplet acc. | spread | grad norm | kp/crop |", "|---|---|---|---|---|---|---|"]
    shown = windows if len(windows) <= 30 else windows[:: -(-len(windows) // 30)]
    if windows and shown[-1] is not windows[-1]:
        shown = shown + windows[-1:]
    for w in shown:
        lines.append(f"| {w['step']} | {w.get('stage', 1)} | {w['loss']:.4f} | {w['triplet_accuracy']:.3f} | "
                     f"{w['spread']:.3f} | {w.get('grad_norm', float('nan')):.3f} | {w['keypoints']:.0f} |")
    if validations:
        lines += ["", "Held-out validation (mean MMA@3 of the test-time extractor):", "",
                  "| step | MMA@3 | rendered | homography | matches |", "|---|---|---|---|---|"]
        for v in validations:
            lines.append(f"| {v['step']} | {v['val_mma3']:.3f} | {v.get('val_mma3 rendered', float('nan')):.3f} | "
                         f"{v.get('val_mma3 homography', float('nan')):.3f} | {v['val_matches']:.0f} |")
    if events:
        lines += ["", "Collapse events: " + "; ".join(str(e) for e in events)]
    if windows:
        first, last = windows[0], windows[-1]
        lines += ["", f"Loss {first['loss']:.4f} -> {last['loss']:.4f}, spread {first['spread']:.3f} -> "
                  f"{last['spread']:.3f} (max {max(w['spread'] for w in windows):.3f})."]
    return lines


def write_model_card(directory: Path, config, history: list[dict], weights: Path, selected: str,
                     elapsed_s: float, device: str) -> Path:
    """DIR/model_card.md for the run in `directory`; returns its path."""
    directory = Path(directory)
    validations = [h for h in history if "val_mma3" in h]
    best = max(validations, key=lambda v: v["val_mma3"]) if validations else None
    lines = [f"# Model card: `{weights.name}` (run `{directory}`)", "",
             "| | |", "|---|---|",
             f"| file | `{weights}`, {weights.stat().st_size:,} bytes, float16, sha256 `{sha256(weights)}` |",
             "| layout | official D2-Net: `{\"model\": state_dict}`, "
             "keys `dense_feature_extraction.model.<i>.{weight,bias}` |",
             f"| selected | {selected}"
             + (f" (held-out MMA@3 {best['val_mma3']:.3f} at step {best['step']})" if best else "") + " |",
             f"| init | `{config.init}` |", f"| seed | {config.seed} |",
             f"| machine | {device}, torch {torch.__version__}, Python {platform.python_version()}, "
             f"{elapsed_s / 60:.1f} min |", "",
             "## Data", "", *data_section(config), "",
             "## Recipe", "",
             "D2-Net loss (margin 1, safe radius 4, hardest negatives in both images, soft-detection weights) on the "
             "train-time net (stride 8). Settings:", "", "```",
             *(f"{k} = {v}" for k, v in dataclasses.asdict(config).items()), "```", "",
             "## Numbers measured during training", "", *numbers_section(history), ""]
    path = directory / "model_card.md"
    path.write_text("\n".join(lines))
    logger.info("Model card: %s", path)
    return path


def summary(history: list[dict]) -> dict[str, float]:
    """First/last loss and spread, for logs and tests."""
    windows = [h for h in history if "loss" in h and np.isfinite(h["loss"])]
    if not windows:
        return {}
    return {"first_loss": windows[0]["loss"], "last_loss": windows[-1]["loss"],
            "first_spread": windows[0]["spread"], "last_spread": windows[-1]["spread"]}
