"""The output folder of a reconstruction: the files of each step and OUT/steps.json, which records
per step the fingerprint of its settings and inputs, whether it completed, timings and notes."""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_json
from ..colmap_import import pair_stats_path
from ..errors import D2SfmError

logger = logging.getLogger(__name__)

STEPS = ("extract", "pairs", "match", "refine", "database", "map")


class ReconstructionError(D2SfmError, RuntimeError):
    """Nothing (or nothing usable) could be reconstructed; the message says why and what to try."""


@dataclass(frozen=True)
class OutputLayout:
    root: Path

    features = property(lambda self: self.root / "features.h5")
    global_features = property(lambda self: self.root / "global_features.h5")
    pairs = property(lambda self: self.root / "pairs.txt")
    matches = property(lambda self: self.root / "matches.h5")
    refined_features = property(lambda self: self.root / "features-refined.h5")  # --refine keypoints
    database = property(lambda self: self.root / "database.db")
    pair_stats = property(lambda self: pair_stats_path(self.root / "database.db"))
    models = property(lambda self: self.root / "models")
    mapping_work = property(lambda self: self.root / "models_work")  # the global mapper's database copy
    stability_work = property(lambda self: self.root / "models_check")
    sfm = property(lambda self: self.root / "sfm")
    ply = property(lambda self: self.root / "points.ply")
    summary = property(lambda self: self.root / "summary.json")
    overview = property(lambda self: self.root / "overview.png")
    report = property(lambda self: self.root / "report.html")
    steps = property(lambda self: self.root / "steps.json")
    log = property(lambda self: self.root / "colmap.log")

    def outputs_of(self, step: str) -> list[Path]:
        return {"extract": [self.features], "pairs": [self.pairs], "match": [self.matches],
                "refine": [self.refined_features],
                "database": [self.database, self.pair_stats],
                "map": [self.sfm, self.ply, self.summary, self.overview]}[step]

    def all_files(self) -> list[Path]:
        """Everything this pipeline writes (and --overwrite removes); nothing else in OUT is touched."""
        files = [self.features, self.global_features, self.pairs, self.matches, self.refined_features,
                 self.database, self.pair_stats,
                 self.models, self.mapping_work, self.stability_work, self.sfm, self.ply, self.summary,
                 self.overview, self.report, self.steps, self.log]
        return files + [f.with_name(f.name + ".partial") for f in files]


def remove_outputs(layout: OutputLayout) -> None:
    for path in layout.all_files():
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


class StepLog:
    """OUT/steps.json: per step its settings fingerprint, whether it completed, timings, notes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.entries: dict[str, dict] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except (OSError, ValueError):
            logger.warning("Ignoring unreadable %s: every step runs again", self.path)
            self.entries = {}

    def is_complete(self, step: str, key: str, outputs: list[Path]) -> bool:
        entry = self.entries.get(step, {})
        return entry.get("fingerprint") == key and entry.get("complete", False) and all(p.exists() for p in outputs)

    def same_settings(self, step: str, key: str) -> bool:
        return self.entries.get(step, {}).get("fingerprint") == key

    def start(self, step: str, key: str) -> None:
        self.entries[step] = {"fingerprint": key, "complete": False}
        self.save()

    def finish(self, step: str, timings: dict[str, float], **notes: object) -> None:
        self.entries[step].update(complete=True, timings=timings, **notes)
        self.save()

    def get(self, step: str, item: str, default=None):
        return self.entries.get(step, {}).get(item, default)

    def save(self) -> None:
        write_json(self.path, self.entries)


def image_files_key(image_dir: Path, names: list[str]) -> list[tuple[str, int, int]]:
    """Names with size and modification time: a changed image invalidates the features."""
    key = []
    for name in names:
        try:
            stat = (Path(image_dir) / name).stat()
            key.append((name, stat.st_size, stat.st_mtime_ns))
        except OSError:
            key.append((name, -1, -1))
    return key
