"""What each stored item was computed from: attributes written last, so that an item without
them is incomplete (cut by a kill) and is redone, and a resume redoes exactly what changed."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from ..fingerprint import FileStamp
from .files import current_file, open_h5


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
                    lambda group: ItemRecord(text_attribute(group, SOURCE), text_attribute(group, FEATURE_ID)))


def match_records(path: Path) -> dict[str, ItemRecord]:
    """Pair key -> record, for every pair in the (resumable) matches file."""
    return _records(path, "matches0", "matches file",
                    lambda group: ItemRecord(None, text_attribute(group, PAIR_FEATURES),
                                             text_attribute(group, MATCHER)))


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




def text_attribute(obj: h5py.Group, key: str) -> str | None:
    return str(obj.attrs[key]) if key in obj.attrs else None


def remove_items(handle: h5py.File, names) -> list[str]:
    """Delete the items of `names` that exist: an image that became unreadable must not keep the
    features of its earlier content (a stale result other readers would use)."""
    present = [name for name in names if name in handle]
    for name in present:
        del handle[name]
    return present


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

