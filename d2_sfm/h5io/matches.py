"""Matches in hloc's layout: one group per pair with matches0 and matching_scores0."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from .files import H5FormatError, names_to_pair, names_to_pair_old, opened_file
from .records import MATCHER, PAIR_FEATURES, text_attribute


def write_matches(handle: h5py.File, name0: str, name1: str, matches0: np.ndarray,
                  scores0: np.ndarray, matcher: str | None = None, features: str | None = None) -> None:
    """Write one pair. `matcher`: settings fingerprint; `features`: "id0:id1" of the features
    matched; both written last (a pair without them is incomplete, or from another tool)."""
    key = names_to_pair(name0, name1)
    if key in handle:
        del handle[key]
    group = handle.create_group(key)
    group.create_dataset("matches0", data=np.asarray(matches0, np.int32))
    group.create_dataset("matching_scores0", data=np.asarray(scores0, np.float16))
    if features is not None:
        group.attrs[PAIR_FEATURES] = features
    if matcher is not None:
        group.attrs[MATCHER] = matcher
    handle.flush()


def find_pair(handle: h5py.File, name0: str, name1: str) -> tuple[str, bool]:
    """Key of the pair in either order, and whether it is stored reversed. hloc's old flat keys
    (`name0_name1`) are looked up only in files written entirely that way: they are ambiguous
    (`a`+`b_c` and `a_b`+`c` share one), so a new-style file never falls back to them."""
    keys = [(names_to_pair(name0, name1), False), (names_to_pair(name1, name0), True)]
    if is_old_style(handle):
        keys += [(names_to_pair_old(name0, name1), False), (names_to_pair_old(name1, name0), True)]
    for key, reverse in keys:
        if key in handle and isinstance(handle[key], h5py.Group) and "matches0" in handle[key]:
            return key, reverse
    raise H5FormatError(f"{handle.filename} has no matches for the pair ({name0}, {name1})")


def is_old_style(handle: h5py.File) -> bool:
    """Whether every top-level group of a matches file is a flat `name0_name1` pair."""
    return len(handle) > 0 and all(isinstance(group, h5py.Group) and "matches0" in group
                                   for group in handle.values())


def read_matches(source: Path | h5py.File, name0: str, name1: str, num_keypoints: tuple[int, int] | None = None,
                 feature_ids: tuple[str, str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Matched index pairs (M, 2) (into name0's and name1's keypoints) and their scores (M,),
    from a path or an open file; the pair may be stored in either order or naming scheme.

    With `num_keypoints` (N0, N1), the matches must index exactly those keypoints, and with
    `feature_ids` (of name0's and name1's current features) a pair that records the features it
    was matched from must name these: matches made from other features (stale, or another
    extractor's) are an H5FormatError, never garbage."""
    with opened_file(source) as f:
        key, reverse = find_pair(f, name0, name1)
        group = f[key]
        matches0 = group["matches0"][()]
        scores0 = group["matching_scores0"][()] if "matching_scores0" in group else np.ones(matches0.shape)
        recorded = text_attribute(group, PAIR_FEATURES)
        where = f"{f.filename}: matches of ({name0}, {name1})"
    if feature_ids is not None and recorded is not None:
        expected = ":".join(feature_ids[::-1] if reverse else feature_ids)
        if recorded != expected:
            raise H5FormatError(f"{where} were made from other features than the current ones (stale matches); "
                                "match the pair again")
    if matches0.ndim != 1 or not np.issubdtype(matches0.dtype, np.integer) or scores0.shape != matches0.shape:
        raise H5FormatError(f"{where} are {matches0.dtype} {matches0.shape}, expected (N,) integers with "
                            "as many scores")
    matches0, scores0 = matches0.astype(np.int64), scores0.astype(np.float32)
    if not np.isfinite(scores0).all():
        raise H5FormatError(f"{where} have NaN or inf scores")
    if num_keypoints is not None:
        stored_count, other_count = num_keypoints[::-1] if reverse else num_keypoints
        if len(matches0) != stored_count or (matches0 < -1).any() or (matches0 >= other_count).any():
            raise H5FormatError(f"{where} do not fit the features ({len(matches0)} entries for {stored_count} "
                                f"keypoints, indices {matches0.min(initial=-1)}..{matches0.max(initial=-1)} for "
                                f"{other_count} keypoints, -1 = unmatched); match the pair again with the current "
                                "features")
    idx = np.flatnonzero(matches0 >= 0)
    pairs = np.stack([idx, matches0[idx]], axis=1)
    if reverse:
        pairs = pairs[:, ::-1].copy()
    return pairs, scores0[idx]


def has_pair(handle: h5py.File, name0: str, name1: str) -> bool:
    try:
        find_pair(handle, name0, name1)
        return True
    except H5FormatError:
        return False

