"""Official D2-Net feature files (`<image path>.d2-net`, numpy npz), read and written safely.

The official `extract_features.py` saves, with `np.savez` into `<image path>.d2-net` (no `.npz`
suffix), three arrays:
  keypoints   (N, 3) float32: x, y, scale. x right, y down, in original-image pixels with
              **integer = pixel centre** (the centre of the top-left pixel is (0, 0)), the same
              convention as d2_sfm's HDF5 files; scale is 1 / the pyramid level's scale
              (1 for single-scale, 2 / 1 / 0.5 for the multiscale levels 0.5 / 1 / 2).
  scores      (N,) float32, higher is better.
  descriptors (N, 512) float32, unit L2 norm.
The official script maps resized keypoints back with a plain size ratio (no +-0.5), d2_sfm with
the exact `(x + 0.5) * s - 0.5`; the two agree at the image centre and differ by at most
(s - 1) / 2 px at the borders of images that were downscaled (s = original / resized size).

d2_sfm's HDF5 files do not keep the pyramid level of a keypoint, so exported files carry scale 1.0
for every keypoint (exact for single-scale features; for multiscale ones the level is unknown).

Reading never executes anything from the file (`allow_pickle=False`), and each array's declared
size is checked against the bytes stored for it before numpy allocates it, so a forged header
cannot make us reserve gigabytes. Every problem is one `D2NetFileError` line naming the file.
"""
from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .errors import D2SfmError
from .fingerprint import FileStamp
from .h5io import (FEATURE_ID, H5_SUFFIXES, atomic_h5, feature_records, file_attributes, prune_incomplete, up_to_date,
                   write_features)
from .images import ImageError, read_image_header
from .paths import check_output_path, check_pair_key_collisions, resolve_inside, safe_relative_name

logger = logging.getLogger(__name__)

D2NET_SUFFIX = ".d2-net"  # appended to the image's own file name, as the official script does
D2NET_KEYS = ("keypoints", "scores", "descriptors")
IMPORTED_WEIGHTS = "d2-net-npz"  # the `weights` attribute of a features file imported from .d2-net files
# Keypoints may sit slightly outside [-0.5, size - 0.5]: the official plain-ratio rescaling moves
# border keypoints by up to (s - 1) / 2 px. Further out, the file belongs to another image size.
BOUNDS_TOLERANCE_PX = 8.0


class D2NetFileError(D2SfmError, ValueError):
    """A `.d2-net` file that is missing, not an npz, or not in the official layout."""


@dataclass
class D2NetFeatures:
    """The arrays of one `.d2-net` file, validated."""
    keypoints: np.ndarray  # (N, 3) float32 x, y, scale
    scores: np.ndarray  # (N,) float32
    descriptors: np.ndarray  # (N, D) float32

    def __len__(self) -> int:
        return len(self.keypoints)


def d2net_path(image_dir: Path, name: str) -> Path:
    """Where the official script puts an image's features: `<image path>.d2-net`."""
    path = resolve_inside(image_dir, name)
    return path.with_name(path.name + D2NET_SUFFIX)


# ----------------------------------------------------------------------------------------------
# Writing


def write_d2net_file(path: Path, keypoints_xy: np.ndarray, scores: np.ndarray, descriptors: np.ndarray,
                     scale: float = 1.0) -> Path:
    """Write one file in the official layout (through `<path>.partial`, replaced atomically).

    keypoints_xy: (N, 2) x, y (integer = pixel centre); descriptors (N, D)."""
    keypoints_xy = np.asarray(keypoints_xy, np.float32).reshape(-1, 2)
    keypoints = np.concatenate([keypoints_xy, np.full((len(keypoints_xy), 1), scale, np.float32)], axis=1)
    with atomic_path(path) as partial, open(partial, "wb") as handle:  # a handle: np.savez would add ".npz"
        np.savez(handle, keypoints=keypoints, scores=np.asarray(scores, np.float32).reshape(-1),
                 descriptors=np.asarray(descriptors, np.float32))
    return Path(path)


# ----------------------------------------------------------------------------------------------
# Reading


def _member_shape(archive: zipfile.ZipFile, path: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype declared by the `.npy` header of `key`, checked against its stored size."""
    try:
        info = archive.getinfo(key + ".npy")
    except KeyError:
        raise D2NetFileError(f"{path}: no array {key!r} (an official .d2-net file holds "
                             f"{', '.join(D2NET_KEYS)}; found {', '.join(sorted(archive.namelist())) or 'none'})"
                             ) from None
    with archive.open(info) as member:
        try:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
            else:
                raise ValueError(f"npy format version {version}")
            header_size = member.tell()
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
            raise D2NetFileError(f"{path}: array {key!r} has no valid .npy header ({error})") from None
    if dtype.hasobject:
        raise D2NetFileError(f"{path}: array {key!r} holds Python objects; only numeric arrays are read")
    needed = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize if shape else dtype.itemsize
    if needed > info.file_size - header_size:
        raise D2NetFileError(f"{path}: array {key!r} declares shape {shape} ({needed} bytes) but stores only "
                             f"{max(info.file_size - header_size, 0)} bytes (truncated or forged file)")
    return tuple(shape), dtype


def read_d2net_file(path: Path) -> D2NetFeatures:
    """The validated arrays of one `.d2-net` file (official layout; 2-column keypoints accepted)."""
    path = Path(path)
    if not path.is_file():
        raise D2NetFileError(f"{path}: no such .d2-net file" if not path.exists() else f"{path}: not a file")
    try:
        with zipfile.ZipFile(path) as archive:
            declared = {key: _member_shape(archive, path, key) for key in D2NET_KEYS}
    except zipfile.BadZipFile:
        kind = "a MATLAB .mat file (--output_type mat); re-extract with the default npz" \
            if path.read_bytes()[:6] == b"MATLAB" else "not a numpy .npz archive"
        raise D2NetFileError(f"{path}: {kind}") from None
    for key, (_, dtype) in declared.items():
        if dtype.kind not in "fiu":
            raise D2NetFileError(f"{path}: array {key!r} has dtype {dtype}; numbers expected")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in D2NET_KEYS}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise D2NetFileError(f"{path}: cannot read the npz arrays ({error})") from None
    return validate_arrays(path, arrays)


def validate_arrays(path: Path, arrays: dict[str, np.ndarray]) -> D2NetFeatures:
    """Shapes and values of the official layout; one error line naming the file otherwise."""
    keypoints, scores, descriptors = (arrays[key] for key in D2NET_KEYS)
    if keypoints.ndim != 2 or keypoints.shape[1] not in (2, 3):
        raise D2NetFileError(f"{path}: keypoints have shape {keypoints.shape}; expected (N, 3) x, y, scale")
    count = len(keypoints)
    if scores.shape != (count,):
        raise D2NetFileError(f"{path}: scores have shape {scores.shape}; expected ({count},) like the keypoints")
    if descriptors.ndim != 2 or descriptors.shape[0] != count or descriptors.shape[1] == 0:
        raise D2NetFileError(f"{path}: descriptors have shape {descriptors.shape}; expected ({count}, 512)")
    for key, array in zip(D2NET_KEYS, (keypoints, scores, descriptors)):
        bad = ~np.isfinite(array)
        if bad.any():
            raise D2NetFileError(f"{path}: {key} hold {int(bad.sum())} non-finite value(s) (NaN or inf)")
    if keypoints.shape[1] == 2:
        keypoints = np.concatenate([keypoints, np.ones((count, 1), keypoints.dtype)], axis=1)
    return D2NetFeatures(keypoints.astype(np.float32), scores.astype(np.float32), descriptors.astype(np.float32))


def check_inside_image(path: Path, keypoints: np.ndarray, size_wh: tuple[int, int]) -> None:
    """Keypoints far outside the image mean the file belongs to another image (or another size)."""
    if not len(keypoints):
        return
    width, height = size_wh
    low = -0.5 - BOUNDS_TOLERANCE_PX
    outside = ((keypoints[:, 0] < low) | (keypoints[:, 1] < low)
               | (keypoints[:, 0] > width - 0.5 + BOUNDS_TOLERANCE_PX)
               | (keypoints[:, 1] > height - 0.5 + BOUNDS_TOLERANCE_PX))
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise D2NetFileError(f"{path}: {int(outside.sum())} keypoint(s) lie outside the {width} x {height} image, "
                             f"e.g. ({keypoints[i, 0]:.1f}, {keypoints[i, 1]:.1f}); is it the file of another image?")


# ----------------------------------------------------------------------------------------------
# Import into an hloc features file


@dataclass
class ImportSummary:
    output: Path
    imported: list[str] = field(default_factory=list)
    num_keypoints: dict[str, int] = field(default_factory=dict)
    descriptor_dim: int | None = None


def import_d2net_npz(image_dir: Path, names: list[str], output_h5: Path, overwrite: bool = False) -> ImportSummary:
    """Convert the official `<image>.d2-net` files of `names` (next to the images in `image_dir`)
    into a d2_sfm/hloc features file, so match/reconstruct can use features made elsewhere.

    Every file is read and validated before anything is written: a missing, malformed or
    mismatched file stops the import with one line naming it, and `output_h5` is left as it was.
    Each item records the `.d2-net` file's stamp as its source; the file attributes say the
    features were imported (`weights` = "d2-net-npz")."""
    image_dir, output_h5 = Path(image_dir), Path(output_h5)
    check_output_path(output_h5, H5_SUFFIXES, "features file")
    names = [safe_relative_name(n, str(image_dir)) for n in names]
    if not names:
        raise D2NetFileError(f"no images to import from {image_dir}")
    check_pair_key_collisions(names, str(image_dir))
    loaded = {name: _load_for_image(image_dir, name) for name in names}
    dims = {features.descriptors.shape[1] for features, _, _ in loaded.values()}
    if len(dims) > 1:
        by_dim = {f.descriptors.shape[1]: n for n, (f, _, _) in loaded.items()}
        raise D2NetFileError(f"the .d2-net files in {image_dir} mix descriptor sizes "
                             + ", ".join(f"{d} ({d2net_path(image_dir, n)})" for d, n in sorted(by_dim.items())))
    summary = ImportSummary(output_h5, descriptor_dim=dims.pop())
    if output_h5.exists() and not overwrite:
        raise D2NetFileError(f"{output_h5} already exists; use another output, or overwrite to replace it")
    with atomic_h5(output_h5, fresh=True) as handle:  # items from other sources never mix in
        handle.attrs.update({"weights": IMPORTED_WEIGHTS, "weights_sha256": "",
                             "descriptor_dim": summary.descriptor_dim, "imported_from": "official .d2-net npz"})
        for name, (features, size, stamp) in loaded.items():
            write_features(handle, name, features.keypoints[:, :2], features.descriptors, features.scores,
                           size, source=stamp)
            summary.imported.append(name)
            summary.num_keypoints[name] = len(features)
        prune_incomplete(handle, FEATURE_ID, "keypoints")
    logger.info("Imported %d .d2-net files (%d keypoints) into %s", len(summary.imported),
                sum(summary.num_keypoints.values()), output_h5)
    return summary


def import_d2net_if_changed(image_dir: Path, names: list[str], output_h5: Path) -> bool:
    """Convert the `.d2-net` files of `names` into `output_h5` once: the file is (re)written only
    when it lacks an image or a `.d2-net` file changed since it was imported. Returns whether it was."""
    output_h5 = Path(output_h5)
    attributes = file_attributes(output_h5) if output_h5.exists() else {}
    if attributes and attributes.get("weights") != IMPORTED_WEIGHTS:
        raise D2NetFileError(f"{output_h5} holds features that were not imported from .d2-net files "
                             f"(weights {attributes.get('weights')!r}); give another features file to import into")
    records = feature_records(output_h5) if attributes else {}
    if records and all(up_to_date(records.get(n), d2net_path(image_dir, n)) for n in names):
        logger.info("%s is up to date with the .d2-net files of its %d images", output_h5, len(names))
        return False
    import_d2net_npz(image_dir, names, output_h5, overwrite=True)
    return True


def _load_for_image(image_dir: Path, name: str) -> tuple[D2NetFeatures, tuple[int, int], str]:
    """Validated features of one image, its size (W, H) read from the image header, the file's stamp."""
    path = d2net_path(image_dir, name)
    image = resolve_inside(image_dir, name)
    try:
        header = read_image_header(image)
    except ImageError as error:  # its message names the image
        raise D2NetFileError(f"{error} (its size is needed to check {path.name})") from None
    stamp = FileStamp.of(path).to_text() if path.is_file() else None
    features = read_d2net_file(path)
    check_inside_image(path, features.keypoints, (header.width, header.height))
    return features, (header.width, header.height), stamp
