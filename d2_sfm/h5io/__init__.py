"""hloc-format HDF5 files: features and matches, written so that a crash never corrupts them.
The only place of d2_sfm that imports h5py for its own files.

Features (one group per image name; `a/b.jpg` becomes nested groups `a` -> `b.jpg`):
  keypoints (N, 2) float32 x, y (integer = pixel centre), attribute `uncertainty`;
  descriptors (512, N) float32 or float16; scores (N,) float32; image_size (2,) int64 [W, H].
Matches (one group per pair, named by `names_to_pair`):
  matches0 (N0,) int32, -1 = unmatched (hloc writes int16, which overflows past 32767 keypoints);
  matching_scores0 (N0,) float16.

Every item records what it was computed from, as attributes written last (so an item without them
is incomplete, e.g. cut by a kill, and is redone):
  features: `source` (the image's FileStamp: size, mtime, content hash) and `feature_id` (a hash of
  the keypoints and descriptors); file attributes: weights and extraction settings.
  matches: `matcher` (settings fingerprint) and `features` (the two images' feature_ids).
A resume redoes exactly the items whose record no longer fits their inputs.

Writes take d2_sfm's own lock on the output (`locking.output_lock`) and go to `<file>.partial`
(a copy of the existing file, made only when there is something to write, appended to and flushed
after each item); the real file is replaced atomically only when the run ends or is interrupted
with Ctrl-C. A later run resumes from a readable `.partial`; an unreadable one (cut by a kill) is
discarded with a warning. Killed runs lose at most the item in flight.

Modules: `files` (opening, atomic writes, resume), `records` (provenance attributes), `features`,
`matches`; every public name is importable from `d2_sfm.h5io`.
"""
from __future__ import annotations

from .features import (GLOBAL_DESCRIPTOR, feature_shapes, iter_features, keypoint_uncertainty, read_features,
                       read_global_descriptors, read_image_size, read_keypoints, write_features,
                       write_global_descriptor)
from .files import (H5_SUFFIXES, H5File, H5FormatError, atomic_h5, current_file, discard_unreadable_partial,
                    error_reason, existing_names, external_links, file_attributes, is_empty, list_h5_names,
                    names_to_pair, names_to_pair_old, open_h5, read_file_attributes, remove_h5_output)
from .matches import find_pair, has_pair, is_old_style, read_matches, write_matches
from .records import (FEATURE_ID, MATCHER, PAIR_FEATURES, SOURCE, ItemRecord, feature_id, feature_records,
                      match_records, prune_incomplete, remove_items, stored_feature_id, up_to_date)

__all__ = [
    "H5_SUFFIXES", "H5File", "H5FormatError", "atomic_h5", "current_file", "discard_unreadable_partial",
    "error_reason", "existing_names", "external_links", "file_attributes", "is_empty", "list_h5_names",
    "names_to_pair", "names_to_pair_old", "open_h5", "read_file_attributes", "remove_h5_output",
    "FEATURE_ID", "MATCHER", "PAIR_FEATURES", "SOURCE", "ItemRecord", "feature_id", "feature_records",
    "match_records", "prune_incomplete", "remove_items", "stored_feature_id", "up_to_date",
    "GLOBAL_DESCRIPTOR", "feature_shapes", "iter_features", "keypoint_uncertainty", "read_features",
    "read_global_descriptors", "read_image_size", "read_keypoints", "write_features", "write_global_descriptor",
    "find_pair", "has_pair", "is_old_style", "read_matches", "write_matches",
]
