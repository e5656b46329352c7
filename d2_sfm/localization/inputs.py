"""What localization outputs were computed from: content digests of dataset files and images.

A resume must redo exactly what changed (a query image edited after a finished run, a new
reference model), so every step's record holds digests of its inputs. Hashing a whole dataset on
every run would cost minutes, so `StampCache` keeps each file's `FileStamp` in the output folder
and re-reads a file only when its size or modification time changed (touching a file costs one
hash and redoes nothing; editing it changes its digest). Very large per-cutout scans (InLoc
XYZcut, ~46 MB each) are stamped by size and modification time only (`stat_stamp`).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..fingerprint import FileStamp
from ..atomic import write_json

logger = logging.getLogger(__name__)


class StampCache:
    """{file: FileStamp} remembered between runs in one JSON file of the output folder."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.stamps: dict[str, str] = {}
        self.dirty = False
        try:
            data = json.loads(self.path.read_text())
            if isinstance(data, dict):
                self.stamps = {str(k): str(v) for k, v in data.items()}
        except (OSError, ValueError):
            pass  # no or damaged cache: every file is hashed once

    def digest(self, path: Path) -> str:
        """Content digest of `path` ("missing" when it is not a file); hashed only when its size
        or modification time differ from the remembered stamp."""
        key = str(Path(path).absolute())
        try:
            stat = os.stat(path)
        except OSError:
            return "missing"
        stored = FileStamp.from_text(self.stamps.get(key, ""))
        if stored is not None and stored.size == stat.st_size and stored.mtime_ns == stat.st_mtime_ns:
            return stored.digest
        stamp = FileStamp.of(Path(path))
        self.stamps[key] = stamp.to_text()
        self.dirty = True
        return stamp.digest

    def digests(self, paths: list[Path], root: Path) -> dict[str, str]:
        """{path relative to root: digest} of several files."""
        return {Path(p).relative_to(root).as_posix() if Path(p).is_relative_to(root) else str(p): self.digest(p)
                for p in paths}

    def save(self) -> None:
        if self.dirty:
            write_json(self.path, self.stamps)
            self.dirty = False


def stat_stamp(path: Path) -> str:
    """`size:mtime_ns` of a file too large to hash on every run; "missing" when absent."""
    try:
        stat = os.stat(path)
    except OSError:
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}"
