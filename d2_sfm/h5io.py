"""hloc-format HDF5 files: features and matches, written so that a crash never corrupts them.

Features (one group per image name; `a/b.jpg` becomes nested groups `a` -> `b.jpg`):
  keypoints (N, 2) float32 x, y (integer = pixel centre), attribute `uncertainty`;
  descriptors (512, N) float32 or float16; scores (N,) float32; image_size (2,) int64 [W, H].
Matches (one group per pair, named by `names_to_pair`):
  matches0 (N0,) int32, -1 = unmatched (hloc writes int16, which overflows past 32767 keypoints);
  matching_scores0 (N0,) float16.

Writes go to `<file>.partial` (a copy of the existing file, appended to and flushed after each
item); the real file is replaced atomically only when the run ends or is interrupted with Ctrl-C.
A later run resumes from a readable `.partial`, so killed runs lose at most the item in flight.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from .errors import D2SfmError

logger = logging.getLogger(__name__)


class H5FormatError(D2SfmError, ValueError):
    """An HDF5 file that is not in the expected hloc layout."""


def names_to_pair(name0: str, name1: str, separator: str = "/") -> str:
    """hloc's pair key: slashes in names become dashes, the two names are joined by `separator`."""
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def names_to_pair_old(name0: str, name1: str) -> str:
    return names_to_pair(name0, name1, separator="_")


def list_h5_names(path: Path) -> list[str]:
    """Names of all groups that hold datasets (image names, or pair keys in a matches file)."""
    names: set[str] = set()

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            names.add(name.rsplit("/", 1)[0])

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return sorted(names)


@contextlib.contextmanager
def _opened(source: Path | h5py.File) -> Iterator[h5py.File]:
    """An open file as is, or a path opened read-only for the duration."""
    if isinstance(source, h5py.File):
        yield source
    else:
        with h5py.File(source, "r") as f:
            yield f


def _is_readable(path: Path) -> bool:
    try:
        with h5py.File(path, "r") as f:
            f.visit(lambda _: None)
        return True
    except Exception:  # h5py raises OSError, KeyError, RuntimeError on damaged files
        return False


@contextlib.contextmanager
def atomic_h5(path: Path) -> Iterator[h5py.File]:
    """Open `path` for appending through `<path>.partial`; replace `path` atomically at the end.

    On an exception other than KeyboardInterrupt the partial file is kept for resuming but the
    original stays untouched; on Ctrl-C the progress so far is committed.
    """
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    if partial.exists() and not _is_readable(partial):
        logger.warning("Discarding unreadable partial file %s", partial)
        partial.unlink()
    if not partial.exists():
        if path.exists():
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


def existing_names(path: Path) -> set[str]:
    """Names already present in `path` or in its resumable `.partial` file."""
    partial = Path(path).with_name(Path(path).name + ".partial")
    for candidate in (partial, Path(path)):
        if candidate.exists() and _is_readable(candidate):
            return set(list_h5_names(candidate))
    return set()


def write_features(handle: h5py.File, name: str, keypoints: np.ndarray, descriptors: np.ndarray,
                   scores: np.ndarray, image_size: tuple[int, int], uncertainty: float = 1.0,
                   half_descriptors: bool = False) -> None:
    """Write one image's features. descriptors: (N, D) as extracted; stored (D, N) like hloc."""
    if name in handle:
        del handle[name]
    group = handle.create_group(name)
    kp = group.create_dataset("keypoints", data=np.asarray(keypoints, np.float32).reshape(-1, 2))
    kp.attrs["uncertainty"] = float(uncertainty)
    desc_type = np.float16 if half_descriptors else np.float32
    group.create_dataset("descriptors", data=np.asarray(descriptors, desc_type).T)
    group.create_dataset("scores", data=np.asarray(scores, np.float32))
    group.create_dataset("image_size", data=np.asarray(image_size, np.int64))
    handle.flush()


def read_features(path: Path, name: str) -> dict[str, np.ndarray]:
    """keypoints (N, 2), descriptors (N, D) float32, scores (N,), image_size (2,) of one image."""
    with h5py.File(path, "r") as f:
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
    """Keypoints (N, 2) of one image, from a path or an open file (for many reads)."""
    with _opened(source) as f:
        if name not in f:
            raise H5FormatError(f"{f.filename} has no features for image {name!r}")
        return f[name]["keypoints"][()].astype(np.float32)


def write_matches(handle: h5py.File, name0: str, name1: str, matches0: np.ndarray,
                  scores0: np.ndarray) -> None:
    key = names_to_pair(name0, name1)
    if key in handle:
        del handle[key]
    group = handle.create_group(key)
    group.create_dataset("matches0", data=np.asarray(matches0, np.int32))
    group.create_dataset("matching_scores0", data=np.asarray(scores0, np.float16))
    handle.flush()


def find_pair(handle: h5py.File, name0: str, name1: str) -> tuple[str, bool]:
    """Key of the pair in either order and naming scheme, and whether it is stored reversed."""
    for key, reverse in ((names_to_pair(name0, name1), False), (names_to_pair(name1, name0), True),
                         (names_to_pair_old(name0, name1), False), (names_to_pair_old(name1, name0), True)):
        if key in handle:
            return key, reverse
    raise H5FormatError(f"{handle.filename} has no matches for the pair ({name0}, {name1})")


def read_matches(source: Path | h5py.File, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
    """Matched index pairs (M, 2) (into name0's and name1's keypoints) and their scores (M,),
    from a path or an open file; the pair may be stored in either order or naming scheme."""
    with _opened(source) as f:
        key, reverse = find_pair(f, name0, name1)
        matches0 = f[key]["matches0"][()].astype(np.int64)
        scores0 = f[key]["matching_scores0"][()].astype(np.float32)
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
