"""Reading COLMAP model folders (cameras, images, points3D as .bin or .txt)."""
from __future__ import annotations

from pathlib import Path

import pycolmap

from .errors import D2SfmError


class ModelError(D2SfmError, ValueError):
    """A folder that does not hold a COLMAP model."""


def read_model(reference: Path | pycolmap.Reconstruction,
               error: type[D2SfmError] = ModelError) -> pycolmap.Reconstruction:
    """A reconstruction as is, or read from a model folder; `error` (the calling step's error
    type) names the folder when it holds no model."""
    if isinstance(reference, pycolmap.Reconstruction):
        return reference
    path = Path(reference)
    if not (path / "images.bin").is_file() and not (path / "images.txt").is_file():
        raise error(f"{path} is not a COLMAP model folder (expected cameras, images, points3D as .bin or .txt)")
    return pycolmap.Reconstruction(str(path))
