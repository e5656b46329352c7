"""Atomic file writes: a reader (or a run resumed after a kill) sees the old file or the new one,
never half of one. Everything d2_sfm writes goes through `atomic_path` (HDF5 outputs through
`h5io.atomic_h5`, which keeps a resumable `.partial`).
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

from .paths import OutputPathError


def real_output(path: Path) -> Path:
    """The file an output path really names: symbolic links are followed (so a link to an output
    is written through, not replaced, and shares the target's lock), and something that exists
    but is not a regular file (a device, a FIFO, a folder) is refused rather than replaced."""
    real = Path(os.path.realpath(path))
    if real.exists() and not real.is_file():
        raise OutputPathError(f"output {path} exists and is not a regular file; d2_sfm only replaces files")
    return real


def partial_path(path: Path) -> Path:
    """Where `path` is written before it replaces the real file: `<path>.partial`, same folder."""
    path = Path(os.path.realpath(path))
    return path.with_name(path.name + ".partial")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; on success it replaces `path` at once,
    on any failure it is removed and `path` stays as it was."""
    path = real_output(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    partial.unlink(missing_ok=True)
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> Path:
    """Write a text file atomically; returns its path."""
    with atomic_path(path) as partial:
        partial.write_text(text)
    return Path(path)


def write_json(path: Path, data: object) -> Path:
    """Write JSON (indented, non-JSON values by their str()) atomically."""
    return write_text(path, json.dumps(data, indent=1, default=str) + "\n")
