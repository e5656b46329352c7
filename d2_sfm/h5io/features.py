"""Features in hloc's layout: one group per image with keypoints, descriptors, scores, image_size."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from .files import H5FormatError, open_h5, opened_file
from .records import FEATURE_ID, SOURCE, feature_id


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
        return features_of(f, name)


def iter_features(path: Path, names: list[str]) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """(name, read_features' dict) per image, read from one open file."""
    with open_h5(path, "features file") as f:
        for name in names:
            yield name, features_of(f, name)


def features_of(f: h5py.File, name: str) -> dict[str, np.ndarray]:
    if name not in f:
        raise H5FormatError(f"{f.filename} has no features for image {name!r}")
    group = f[name]
    try:
        return {
            "keypoints": group["keypoints"][()].astype(np.float32),
            "descriptors": group["descriptors"][()].astype(np.float32).T,
            "scores": group["scores"][()].astype(np.float32),
            "image_size": group["image_size"][()],
        }
    except KeyError as error:
        raise H5FormatError(f"{f.filename}: features of {name!r} lack {error}") from error


GLOBAL_DESCRIPTOR = "global_descriptor"  # one image's vector in hloc's global-features layout


def write_global_descriptor(handle: h5py.File, name: str, descriptor: np.ndarray, source: str) -> None:
    """One image's global descriptor (D,) as hloc's pairs_from_retrieval reads it; `source`: the
    image's FileStamp text; the record written last (= complete)."""
    if name in handle:
        del handle[name]
    group = handle.create_group(name)
    group.create_dataset(GLOBAL_DESCRIPTOR, data=descriptor)
    group.attrs[SOURCE] = source
    group.attrs[FEATURE_ID] = feature_id(descriptor, descriptor[:0])
    handle.flush()


def read_global_descriptors(path: Path, names: list[str]) -> np.ndarray:
    """(N, D) float32 global descriptors of `names`, in that order."""
    with open_h5(path, "global descriptors file") as f:
        missing = [n for n in names if n not in f or GLOBAL_DESCRIPTOR not in f[n]]
        if missing:
            raise H5FormatError(f"{path} has no global descriptor for {len(missing)} image(s), e.g. {missing[0]!r}")
        return np.stack([f[n][GLOBAL_DESCRIPTOR][()].astype(np.float32) for n in names])


def feature_shapes(path: Path, names: list[str] | None = None
                   ) -> tuple[dict[str, int], dict[str, tuple[int, int]]]:
    """Keypoints per image (from the dataset shapes, no data read) and image sizes (W, H), of
    `names` (default: every image); images without keypoints are left out."""
    counts, sizes = {}, {}
    with open_h5(path, "features file") as f:
        if names is None:
            names = []
            f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Group) and "keypoints" in o else None)
        for name in names:
            if name in f and "keypoints" in f[name]:
                counts[name] = int(f[name]["keypoints"].shape[0])
                if "image_size" in f[name]:
                    sizes[name] = tuple(int(v) for v in f[name]["image_size"][()])
    return counts, sizes


def read_keypoints(source: Path | h5py.File, name: str) -> np.ndarray:
    """Keypoints (N, 2) float32 of one image, from a path or an open file (for many reads);
    anything but N finite x, y pairs is an H5FormatError naming the file and the image."""
    with opened_file(source) as f:
        keypoints = feature_dataset(f, name, "keypoints")
        if keypoints.ndim != 2 or keypoints.shape[1] != 2 or not np.issubdtype(keypoints.dtype, np.number):
            raise H5FormatError(f"{f.filename}: keypoints of {name!r} are {keypoints.dtype} {keypoints.shape}, "
                                "expected (N, 2) numbers")
        keypoints = keypoints.astype(np.float32)
        if not np.isfinite(keypoints).all():
            raise H5FormatError(f"{f.filename}: keypoints of {name!r} contain NaN or inf")
        return keypoints


def keypoint_uncertainty(source: Path | h5py.File, name: str) -> float:
    """The detection noise (px) recorded with an image's keypoints (hloc's attribute; 1 if absent)."""
    with opened_file(source) as f:
        feature_dataset(f, name, "keypoints")
        return float(f[name]["keypoints"].attrs.get("uncertainty", 1.0))


def read_image_size(source: Path | h5py.File, name: str) -> tuple[int, int]:
    """(W, H) of the image the features of `name` were extracted from."""
    with opened_file(source) as f:
        size = feature_dataset(f, name, "image_size")
        if size.shape != (2,) or not np.issubdtype(size.dtype, np.number) or (size <= 0).any():
            raise H5FormatError(f"{f.filename}: image_size of {name!r} is {size!r}, expected (W, H) > 0")
        return int(size[0]), int(size[1])


def feature_dataset(f: h5py.File, name: str, key: str) -> np.ndarray:
    """The array `name/key`, or an H5FormatError naming the file, the image and what is missing."""
    if name not in f or not isinstance(f[name], h5py.Group):
        raise H5FormatError(f"{f.filename} has no features for image {name!r}")
    if key not in f[name] or not isinstance(f[name][key], h5py.Dataset):
        raise H5FormatError(f"{f.filename}: the features of {name!r} have no {key!r} dataset")
    return f[name][key][()]

