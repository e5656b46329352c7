"""Visual localization steps used by `python -m d2_sfm.localize` (Aachen Day-Night, InLoc).

The chain of `python -m d2_sfm.localize`, imported on demand:
- `config`: dataset presets, the run's settings and files (no torch, no pycolmap: instant start);
- `scenes`: the datasets as the chain sees them (Aachen / kapture: a triangulated model; InLoc:
  cutout scans), `open_scene`;
- `retrieval`: the first K of a pairs file, or GeM global-descriptor retrieval;
- `chain`: the five steps on validated inputs; `results`: the results file and summary.json.

Steps (each with a `main()`):
- `estimation`: the absolute-pose estimator (pycolmap LO-RANSAC + refinement, known intrinsics),
  per-query results and their resumable log; the per-query work split into reading (this
  process) and estimating (this process or Ray workers). Shared by both dataset families.
- `covisibility`: database pairs from a reference model (shared 3D points, or camera poses when
  the model has no points), for triangulation.
- `model`: a triangulated model as the pose step reads it (3D point of each keypoint) and
  covisibility clusters of retrieved images.
- `pose_from_model`: 2D-3D matches through a triangulated model (Aachen; like hloc localize_sfm).
- `pose_from_cutouts`: 2D-3D matches through the cutouts' per-pixel `XYZcut` scans (InLoc; like
  hloc localize_inloc).
- `query_refinement`: query keypoint adjustment before PnP (`--refine keypoints`): each
  correspondence's query keypoint aligned to the dense features of its database observation.
- `evaluate`: share of queries within the benchmark's (position, rotation) thresholds.
- `inputs`: content digests of dataset files and images (cached FileStamps), so a resume
  redoes exactly the model or the queries whose inputs changed.

Pixel conventions where coordinates cross a boundary: keypoints in the features HDF5 follow
D2-Net / hloc (integer = pixel centre); pycolmap cameras follow COLMAP (the centre of the top-left
pixel is (0.5, 0.5)), so 2D points get +0.5 before pose estimation, for every dataset.
Poses are `cam_from_world` (world -> camera) everywhere.
"""
from __future__ import annotations

from ..errors import D2SfmError


class LocalizationError(D2SfmError, ValueError):
    """Inputs of the localization steps that cannot be used; the message names the file."""


__all__ = ["LocalizationError"]
