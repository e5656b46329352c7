"""hloc-format HDF5 files: features and matches, written so that a crash never corrupts them.

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
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import h5py
import numpy as np

from .errors import D2SfmError
from .atomic import partial_path, real_output
from .fingerprint import FileStamp
from .locking import output_lock

logger = logging.getLogger(__name__)


H5_SUFFIXES = (".h5", ".hdf5")  # accepted for features and matches outputs


class H5FormatError(D2SfmError, ValueError):
    """An HDF5 file that is not in the expected hloc layout."""


def names_to_pair(name0: str, name1: str, separator: str = "/") -> str:
    """hloc's pair key: slashes in names become dashes, the two names are joined by `separator`."""
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def names_to_pair_old(name0: str, name1: str) -> str:
    return names_to_pair(name0, name1, separator="_")


def open_h5(path: Path, what: str = "HDF5 file") -> h5py.File:
    """Open `path` read-only; a missing, truncated or non-HDF5 file is one H5FormatError line."""
    path = Path(path)
    if not path.is_file():
        raise H5FormatError(f"{what} {path} does not exist" if not path.exists() else f"{what} {path} is not a file")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:  # h5py: "file signature not found", "truncated file", ...
        raise H5FormatError(f"{what} {path} is not a readable HDF5 file ({error_reason(error)}); "
                            "is it truncated, or another format?") from None
    links = external_links(path, handle)
    if links:
        handle.close()
        raise H5FormatError(f"{what} {path} links to other files ({', '.join(links[:3])}): refused, a data file "
                            "may not make d2_sfm read files it names")
    return handle


def external_links(path: Path, handle: h5py.File) -> list[str]:
    """Names of the HDF5 external links in an open file: h5py would follow them to whatever file
    they name. The scan (about 1.7 s for 7,000 images) is done once per file version."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _EXTERNAL_LINKS:
        found: list[str] = []
        handle.visititems_links(lambda name, link: found.append(name) if isinstance(link, h5py.ExternalLink)
                                else None)
        _EXTERNAL_LINKS[key] = found
    return _EXTERNAL_LINKS[key]


_EXTERNAL_LINKS: dict[tuple[str, int, int], list[str]] = {}  # file version -> its external links


def error_reason(error: BaseException) -> str:
    """h5py's long messages cut to their informative part, on one line."""
    text = " ".join(str(error).split())
    return text.split("(", 1)[0].strip() or type(error).__name__


def list_h5_names(path: Path) -> list[str]:
    """Names of all groups that hold datasets (image names, or pair keys in a matches file)."""
    names: set[str] = set()

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            names.add(name.rsplit("/", 1)[0])

    with open_h5(path) as f:
        f.visititems(visit)
    return sorted(names)


@contextlib.contextmanager
def _opened(source: Path | h5py.File) -> Iterator[h5py.File]:
    """An open file as is, or a path opened read-only for the duration."""
    if isinstance(source, h5py.File):
        yield source
    else:
        with open_h5(source) as f:
            yield f


def _is_readable(path: Path) -> bool:
    try:
        with h5py.File(path, "r") as f:
            f.visit(lambda _: None)
        return True
    except Exception:  # h5py raises OSError, KeyError, RuntimeError on damaged files
        return False


def discard_unreadable_partial(path: Path) -> None:
    """A `.partial` cut by a kill mid-write is removed with a warning (its items are redone)."""
    partial = partial_path(path)
    if partial.exists() and not _is_readable(partial):
        logger.warning("Discarding %s: left unreadable by an interrupted run; its items are redone", partial)
        partial.unlink()


def current_file(path: Path) -> Path | None:
    """The file a resume continues from: a readable `.partial`, else `path`, else None."""
    discard_unreadable_partial(path)
    for candidate in (partial_path(path), Path(path)):
        if candidate.exists():
            return candidate
    return None


def remove_h5_output(path: Path) -> None:
    """Delete an output and its `.partial` (for --overwrite, after the inputs were validated)."""
    for stale in (real_output(path), partial_path(path)):  # through a link: the file it names
        stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_h5(path: Path, fresh: bool = False) -> Iterator[h5py.File]:
    """Open `path` for appending through `<path>.partial`; replace `path` atomically at the end.

    `fresh`: start from an empty file instead of the existing items (they are all being redone).
    On an exception other than KeyboardInterrupt the partial file is kept for resuming but the
    original stays untouched; on Ctrl-C the progress so far is committed. Holds the output's lock.
    """
    path = real_output(path)
    partial = partial_path(path)
    with output_lock(path):
        if fresh:
            partial.unlink(missing_ok=True)
        discard_unreadable_partial(path)
        if not partial.exists():
            if path.exists() and not fresh:
                if not _is_readable(path):
                    raise H5FormatError(f"{path} is not a readable HDF5 file; remove it or use another output")
                shutil.copyfile(path, partial)
            path.parent.mkdir(parents=True, exist_ok=True)
        committed = False
        # Default libver: "latest" marks files as open-for-write, making a killed run's file unreadable.
        handle = h5py.File(partial, "a")
        try:
            yield handle
            committed = True
        except KeyboardInterrupt:
            committed = True
            raise
        finally:
            handle.close()
            if committed:
                os.replace(partial, path)


def is_empty(path: Path) -> bool:
    """Whether the (resumable) output holds nothing yet: no file, or a file without any group
    (e.g. one cut by a kill before its first item). Reads only the top level."""
    current = current_file(path)
    if current is None:
        return True
    with open_h5(current) as f:
        return len(f) == 0


def existing_names(path: Path) -> set[str]:
    """Names already present in `path` or in its resumable `.partial` file."""
    current = current_file(path)
    return set(list_h5_names(current)) if current else set()


# ----------------------------------------------------------------------------------------------
# What each item was computed from


@dataclass(frozen=True)
class ItemRecord:
    """The provenance attributes of one stored item (None: not recorded, the item is incomplete)."""
    source: str | None  # features: FileStamp text of the image
    identity: str | None  # features: feature_id; matches: "id0:id1"
    settings: str | None = None  # matches: matcher fingerprint


FEATURE_ID, SOURCE, MATCHER, PAIR_FEATURES = "feature_id", "source", "matcher", "features"


def feature_id(keypoints: np.ndarray, descriptors: np.ndarray) -> str:
    """16 hex digits identifying one image's features (matches made from them record it)."""
    digest = hashlib.blake2b(digest_size=8)
    for array in (keypoints, descriptors):
        array = np.ascontiguousarray(array)
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def stored_feature_id(handle: h5py.File, name: str) -> str:
    """The recorded feature_id of an image, computed from the data for files of other tools."""
    group = handle[name]
    if FEATURE_ID in group.attrs:
        return str(group.attrs[FEATURE_ID])
    return feature_id(group["keypoints"][()], group["descriptors"][()])


def feature_records(path: Path, dataset: str = "keypoints") -> dict[str, ItemRecord]:
    """Image name -> record, for every image (a group holding `dataset`) in the (resumable) file."""
    return _records(path, dataset, "features file",
                    lambda group: ItemRecord(_attr(group, SOURCE), _attr(group, FEATURE_ID)))


def match_records(path: Path) -> dict[str, ItemRecord]:
    """Pair key -> record, for every pair in the (resumable) matches file."""
    return _records(path, "matches0", "matches file",
                    lambda group: ItemRecord(None, _attr(group, PAIR_FEATURES), _attr(group, MATCHER)))


def _records(path: Path, dataset: str, what: str, record: Callable[[h5py.Group], ItemRecord]
             ) -> dict[str, ItemRecord]:
    """Group name -> record(group), for every group holding `dataset` in the (resumable) output."""
    records: dict[str, ItemRecord] = {}
    current = current_file(path)
    if current is None:
        return records
    with open_h5(current, what) as f:
        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Group) and dataset in obj:
                records[name] = record(obj)
        f.visititems(visit)
    return records


def up_to_date(record: ItemRecord | None, image: Path) -> bool:
    """Whether a stored item is complete and was computed from `image` as it is now."""
    if record is None or not record.identity or not record.source:
        return False
    stamp = FileStamp.from_text(record.source)
    return stamp is not None and stamp.matches(image)


def file_attributes(path: Path) -> dict[str, object]:
    """The file-level attributes of the (resumable) output, {} when there is none yet."""
    current = current_file(path)
    if current is None:
        return {}
    with open_h5(current) as f:
        return dict(f.attrs)


def _attr(obj: h5py.Group, key: str) -> str | None:
    return str(obj.attrs[key]) if key in obj.attrs else None


def prune_incomplete(handle: h5py.File, marker: str, dataset: str) -> list[str]:
    """Delete groups holding `dataset` but lacking the `marker` attribute (cut by a kill)."""
    incomplete = []

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Group) and dataset in obj and marker not in obj.attrs:
            incomplete.append(name)
    handle.visititems(visit)
    for name in incomplete:
        del handle[name]
    return incomplete


def write_features(handle: h5py.File, name: str, keypoints: np.ndarray, descriptors: np.ndarray,
                   scores: np.ndarray, image_size: tuple[int, int], uncertainty: float = 1.0,
                   half_descriptors: bool = False, source: str | None = None) -> str:
    """Write one image's features. descriptors: (N, D) as extracted; stored (D, N) like hloc.
    `source`: the image's FileStamp text. Returns the feature_id, written last (= complete)."""
    if name in handle:
        del handle[name]
    group = handle.create_group(name)
    keypoints = np.asarray(keypoints, np.float32).reshape(-1, 2)
    kp = group.create_dataset("keypoints", data=keypoints)
    kp.attrs["uncertainty"] = float(uncertainty)
    desc_type = np.float16 if half_descriptors else np.float32
    stored = np.asarray(descriptors, desc_type).T
    group.create_dataset("descriptors", data=stored)
    group.create_dataset("scores", data=np.asarray(scores, np.float32))
    group.create_dataset("image_size", data=np.asarray(image_size, np.int64))
    if source is not None:
        group.attrs[SOURCE] = source
    identity = feature_id(keypoints, stored)
    group.attrs[FEATURE_ID] = identity
    handle.flush()
    return identity


def read_features(path: Path, name: str) -> dict[str, np.ndarray]:
    """keypoints (N, 2), descriptors (N, D) float32, scores (N,), image_size (2,) of one image."""
    with open_h5(path, "features file") as f:
        if name not in f:
            raise H5FormatError(f"{path} has no features for image {name!r}")
        group = f[name]
        try:
            return {
                "keypoints": group["keypoints"][()].astype(np.float32),
                "descriptors": group["descriptors"][()].astype(np.float32).T,
                "scores": group["scores"][()].astype(np.float32),
                "image_size": group["image_size"][()],
            }
        except KeyError as error:
            raise H5FormatError(f"{path}: features of {name!r} lack {error}") from error


def read_keypoints(source: Path | h5py.File, name: str) -> np.ndarray:
    """Keypoints (N, 2) float32 of one image, from a path or an open file (for many reads);
    anything but N finite x, y pairs is an H5FormatError naming the file and the image."""
    with _opened(source) as f:
        keypoints = _dataset(f, name, "keypoints")
        if keypoints.ndim != 2 or keypoints.shape[1] != 2 or not np.issubdtype(keypoints.dtype, np.number):
            raise H5FormatError(f"{f.filename}: keypoints of {name!r} are {keypoints.dtype} {keypoints.shape}, "
                                "expected (N, 2) numbers")
        keypoints = keypoints.astype(np.float32)
        if not np.isfinite(keypoints).all():
            raise H5FormatError(f"{f.filename}: keypoints of {name!r} contain NaN or inf")
        return keypoints


def keypoint_uncertainty(source: Path | h5py.File, name: str) -> float:
    """The detection noise (px) recorded with an image's keypoints (hloc's attribute; 1 if absent)."""
    with _opened(source) as f:
        _dataset(f, name, "keypoints")
        return float(f[name]["keypoints"].attrs.get("uncertainty", 1.0))


def read_image_size(source: Path | h5py.File, name: str) -> tuple[int, int]:
    """(W, H) of the image the features of `name` were extracted from."""
    with _opened(source) as f:
        size = _dataset(f, name, "image_size")
        if size.shape != (2,) or not np.issubdtype(size.dtype, np.number) or (size <= 0).any():
            raise H5FormatError(f"{f.filename}: image_size of {name!r} is {size!r}, expected (W, H) > 0")
        return int(size[0]), int(size[1])


def _dataset(f: h5py.File, name: str, key: str) -> np.ndarray:
    """The array `name/key`, or an H5FormatError naming the file, the image and what is missing."""
    if name not in f or not isinstance(f[name], h5py.Group):
        raise H5FormatError(f"{f.filename} has no features for image {name!r}")
    if key not in f[name] or not isinstance(f[name][key], h5py.Dataset):
        raise H5FormatError(f"{f.filename}: the features of {name!r} have no {key!r} dataset")
    return f[name][key][()]


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
    with _opened(source) as f:
        key, reverse = find_pair(f, name0, name1)
        group = f[key]
        matches0 = group["matches0"][()]
        scores0 = group["matching_scores0"][()] if "matching_scores0" in group else np.ones(matches0.shape)
        recorded = _attr(group, PAIR_FEATURES)
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
