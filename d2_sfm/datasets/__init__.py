"""Datasets for d2_sfm: synthetic scenes rendered from real photographs, and the file formats of
Aachen Day-Night (v1.0, v1.1) and InLoc.

Modules (imported on demand; this package itself imports nothing heavy):
- `render`: pinhole camera, textured quads, z-buffer renderer, night transform.
- `textures`: collage textures cut from scikit-image's bundled CC0 / public-domain photographs.
- `scenes`: the synthetic street (Aachen-like), room (InLoc-like) and plaza (sample) scenes.
- `sample_scene`: the small multi-view scene used by `python -m d2_sfm.reconstruct`.
- `formats`: NVM v3, intrinsics lists, results (pose) files, pairs files.
- `aachen`, `inloc`, `kapture_dataset`: dataset descriptions that locate and validate every file
  (`kapture_writer`: the synthetic look-alike as a kapture dataset).
- `synthetic`: writes small datasets in the exact Aachen / InLoc layouts (CLI; the InLoc part in
  `synthetic_inloc`, shared pieces in `synthetic_views`).

Conventions everywhere: poses are `cam_from_world` (world -> camera, COLMAP axes x right, y down,
z forward); pixel coordinates are COLMAP's (the centre of the top-left pixel is (0.5, 0.5)).
"""
from __future__ import annotations

from ..errors import D2SfmError


class DatasetError(D2SfmError, ValueError):
    """A dataset file that is missing or malformed; the message names the file (and line)."""


__all__ = ["DatasetError"]
