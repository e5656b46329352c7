"""A reconstruct or localize output folder as the exporters read it (features, pairs and matches,
model, summary.json), and export folders written whole or not at all."""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .colmap import pycolmap
from .colmap_model import read_model
from .datasets.formats import read_pairs, rigid_from_qt
from .errors import D2SfmError
from .h5io import has_pair, open_h5, read_image_size, read_matches
from .paths import safe_relative_name

logger = logging.getLogger(__name__)


class ExportError(D2SfmError, ValueError):
    """An input folder that cannot be exported, or an output that cannot be written."""


# ----------------------------------------------------------------------------------------------
# What a run folder holds


@dataclass
class RunFolder:
    """The files of a `reconstruct` or `localize` output folder that exports read."""
    root: Path
    kind: str  # "reconstruct" | "localize"
    features: Path
    model: Path | None  # COLMAP model folder, when the run built one
    match_files: list[tuple[Path, Path]] = field(default_factory=list)  # (pairs file, matches file)
    database: Path | None = None
    summary: dict = field(default_factory=dict)

    @property
    def image_dir(self) -> Path | None:
        """The image folder recorded by reconstruct (localize records the dataset root only)."""
        images = self.summary.get("images")
        return Path(images) if isinstance(images, str) and Path(images).is_dir() else None

    def query_poses(self) -> dict[str, pycolmap.Rigid3d]:
        """Localized queries (name -> cam_from_world) from a localize summary.json."""
        poses = {}
        for query in self.summary.get("queries", []) or []:
            pose = query.get("cam_from_world") if isinstance(query, dict) else None
            if pose:
                try:
                    poses[safe_relative_name(str(query["name"]), "summary.json")] = rigid_from_qt(
                        pose["qvec_wxyz"], pose["tvec"], "summary.json query pose")
                except (KeyError, TypeError, ValueError) as error:
                    raise ExportError(f"{self.root / 'summary.json'}: malformed query pose ({error})") from None
        return poses


MODEL_DIRS = {"reconstruct": "sfm", "localize": "sfm_d2"}  # the COLMAP model of each kind of run


def read_summary(path: Path, error: type[D2SfmError] = ExportError) -> dict:
    """A run's summary.json, {} when there is none; `error` (the caller's type) when unreadable."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as problem:
        raise error(f"{path}: not a readable summary.json ({problem})") from None
    return data if isinstance(data, dict) else {}


def run_kind(root: Path, summary: dict) -> str:
    """"localize" for a folder with localize's files or summary, else "reconstruct"."""
    localize = (root / "matches-query.h5").exists() or (root / MODEL_DIRS["localize"]).is_dir() or "dataset" in summary
    return "localize" if localize else "reconstruct"


def open_run_folder(root: Path) -> RunFolder:
    """Recognise a reconstruct or localize output folder; one error line when it is neither."""
    root = Path(root)
    if not root.is_dir():
        raise ExportError(f"input {root} is not a folder (expected a reconstruct or localize output folder)")
    features = root / "features.h5"
    if not features.is_file():
        raise ExportError(f"{root} has no features.h5: not a reconstruct or localize output folder "
                          "(or the run stopped before extraction finished)")
    summary = read_summary(root / "summary.json")
    if run_kind(root, summary) == "localize":
        pairs = [(root / "pairs-db-covis.txt", root / "matches-db.h5"),
                 (root / "pairs-query.txt", root / "matches-query.h5")]
        model = root / MODEL_DIRS["localize"]
        return RunFolder(root, "localize", features, model if model.is_dir() else None,
                         [p for p in pairs if p[0].is_file() and p[1].is_file()], None, summary)
    model = root / MODEL_DIRS["reconstruct"]
    database = root / "database.db"
    pairs = [(root / "pairs.txt", root / "matches.h5")]
    return RunFolder(root, "reconstruct", features, model if model.is_dir() else None,
                     [p for p in pairs if p[0].is_file() and p[1].is_file()],
                     database if database.is_file() else None, summary)


def require_model(run: RunFolder) -> pycolmap.Reconstruction:
    if run.model is None:
        raise ExportError(f"{run.root} holds no COLMAP model (sfm/ or sfm_d2/): the run built none "
                          "(InLoc localization, or a reconstruction that stopped before mapping)")
    return read_model(run.model, ExportError)


# ----------------------------------------------------------------------------------------------
# Output folders written whole or not at all


def check_output_folder(output: Path, protected: list[Path], overwrite: bool) -> Path:
    """DIR may not be or contain an input; an existing non-empty DIR needs `overwrite`."""
    output = Path(output)
    resolved = output.resolve()
    for path in protected:
        path = Path(path).resolve()
        if resolved == path or resolved in path.parents:
            raise ExportError(f"output {output} is or contains the input folder {path}; choose another folder")
    if output.exists() and not output.is_dir():
        raise ExportError(f"output {output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ExportError(f"output {output} exists and is not empty; use --overwrite to replace it")
    return output


def staged_folder(output: Path, write: Callable[[Path], None]) -> Path:
    """Run `write` into `<output>.partial`, then put it in place of `output` (whole or nothing)."""
    output = Path(output)
    staging = output.with_name(output.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        write(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if output.exists():
        shutil.rmtree(output)
    staging.rename(output)
    return output


# ----------------------------------------------------------------------------------------------
# Reading features and matches


def image_sizes(features: Path, names: list[str]) -> dict[str, tuple[int, int]]:
    with open_h5(features, "features file") as f:
        return {name: read_image_size(f, name) for name in names}


def iter_pair_matches(run: RunFolder, names: set[str]) -> Iterator[tuple[str, str, np.ndarray, np.ndarray]]:
    """(name0, name1, matches (M, 2) into name0's and name1's keypoints, scores (M,)) of every
    matched pair, each pair once."""
    seen: set[tuple[str, str]] = set()
    for pairs_file, matches_file in run.match_files:
        with open_h5(matches_file, "matches file") as f:
            for name0, name1 in read_pairs(pairs_file):
                key = tuple(sorted((name0, name1)))
                if key in seen or name0 == name1 or not {name0, name1} <= names:
                    continue
                seen.add(key)
                if not has_pair(f, name0, name1):
                    logger.warning("%s lists (%s, %s) but %s has no matches for it; skipped",
                                   pairs_file, name0, name1, matches_file)
                    continue
                pairs, scores = read_matches(f, name0, name1)
                yield name0, name1, pairs, scores
