"""Reading the features and matches HDF5 files (hloc layout) through open handles, for the
localization steps that visit many images and pairs."""
from __future__ import annotations

import h5py
import numpy as np

from ..h5io import H5FormatError, find_pair


def read_keypoints(features: h5py.File, name: str) -> np.ndarray:
    if name not in features:
        raise H5FormatError(f"{features.filename} has no features for image {name!r}")
    return features[name]["keypoints"][()].astype(np.float32)


def read_match_indices(matches: h5py.File, query: str, db: str) -> np.ndarray:
    """(M, 2) indices (query keypoint, db keypoint) of the pair, stored in either order."""
    key, reverse = find_pair(matches, query, db)
    matches0 = matches[key]["matches0"][()].astype(np.int64)
    valid = np.flatnonzero(matches0 >= 0)
    pairs = np.stack([valid, matches0[valid]], axis=1)
    return pairs[:, ::-1] if reverse else pairs
