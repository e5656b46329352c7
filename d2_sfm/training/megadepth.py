"""MegaDepth training pairs in the official D2-Net preprocessed layout (`lib/dataset.py`).

Layout, below `root` (the official `base_path`):
  scene_info/<scene>.npz  written by the official `megadepth_utils/preprocess_scene.py`, with
      image_paths, depth_paths (relative to root; None for unused images), intrinsics (N, 3, 3),
      poses (N, 4, 4) cam_from_world, overlap_matrix (N, N), scale_ratio_matrix (N, N) and,
      optionally, points3D_id_to_2D / points3D_id_to_ndepth (lists of dicts; pickled objects).
      Object arrays are read by a restricted unpickler that only builds numpy arrays, dtypes,
      numpy scalars and plain containers: a crafted scene file cannot run code (MegaDepthError).
  <image_paths[k]>  RGB image; <depth_paths[k]>  HDF5 with dataset "/depth" (same H x W, 0 = unknown).
A pair (i, k) is eligible when overlap in [min_overlap, max_overlap] and scale ratio <= max.
Each epoch draws `pairs_per_scene` eligible pairs per scene (with replacement). Each pair
is cropped to crop_size x crop_size around one shared 3D point (or, without points3D_id_to_2D,
around a random image-1 pixel whose depth reprojects consistently). Correspondences of the
train-net cells (pixel 8p + 3.5 of crop 1) come from depth warping, kept when the warped depth
agrees with image 2's depth map: |z_est - z_gt| < depth_tolerance (official 0.05).
Pixel convention: integer = pixel centre; COLMAP intrinsics use centre (0.5, 0.5), hence the +-0.5.
"""
from __future__ import annotations

import io
import logging
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch

from ..errors import D2SfmError
from ..paths import UnsafePathError, safe_relative_name
from .losses import Correspondences
from .pairs import PairSample, cell_grid_pixels, image_tensor

logger = logging.getLogger(__name__)

SCENE_KEYS = ("image_paths", "depth_paths", "intrinsics", "poses", "overlap_matrix", "scale_ratio_matrix")


class MegaDepthError(D2SfmError, ValueError):
    """A MegaDepth folder or scene file that does not follow the official layout."""


@dataclass(frozen=True)
class MegaDepthConfig:
    crop_size: int = 256
    min_overlap: float = 0.5
    max_overlap: float = 1.0
    max_scale_ratio: float = float("inf")
    pairs_per_scene: int = 100  # official: 100 for training, 25 for validation
    depth_tolerance: float = 0.05


@dataclass(frozen=True)
class PairInfo:
    scene: str
    image_paths: tuple[str, str]
    depth_paths: tuple[str, str]
    intrinsics: tuple[np.ndarray, np.ndarray]  # 3x3 each
    poses: tuple[np.ndarray, np.ndarray]  # 4x4 cam_from_world each
    centre_ij: tuple[np.ndarray, np.ndarray] | None  # shared point (i, j) in each full image


def scene_files(root: Path, scenes: list[str] | None = None) -> list[Path]:
    folder = Path(root) / "scene_info"
    if not folder.is_dir():
        raise MegaDepthError(f"MegaDepth root {root} has no scene_info/ folder (official layout expected)")
    files = sorted(folder.glob("*.npz"))
    if scenes is not None:
        wanted = set(scenes)
        files = [f for f in files if f.stem in wanted or f.stem.split(".")[0] in wanted]
    if not files:
        raise MegaDepthError(f"no scene_info/*.npz files found below {root}")
    return files


# What the official scene files' object arrays (lists of str/None, dicts of int -> array or
# float) need from pickle: numpy arrays, dtypes and scalars, and harmless builtin types. Nothing
# else is ever imported or called, so a crafted file cannot run code.
SAFE_GLOBALS = frozenset({
    *((module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
      for name in ("_reconstruct", "scalar")),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    *((module, name) for module in ("builtins", "__builtin__")
      for name in ("list", "dict", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int",
                   "float", "complex", "bool")),
})


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global outside SAFE_GLOBALS (no code from data files)."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays and plain "
                                         "containers are allowed in a scene file)")
        return super().find_class(module, name)


def read_npy(stream: io.BufferedIOBase, size: int) -> np.ndarray:
    """One .npy member of `size` bytes: plain arrays read directly (their declared size checked
    against the member's first), object arrays by the restricted unpickler."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version in ((2, 0), (3, 0)):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    if not dtype.hasobject:
        count = int(np.prod(shape, dtype=object))
        if count * dtype.itemsize > size:
            raise ValueError(f"an array of shape {shape} does not fit in its {size} bytes")
        data = bytearray(count * dtype.itemsize)
        if stream.readinto(data) != len(data):
            raise ValueError(f"array data is truncated (shape {shape})")
        array = np.frombuffer(data, dtype=dtype, count=count)
        return array.reshape(shape[::-1]).transpose() if fortran_order else array.reshape(shape)
    array = RestrictedUnpickler(stream, encoding="latin1").load()
    if not isinstance(array, np.ndarray):
        raise ValueError(f"an object array member holds a {type(array).__name__}, not an array")
    return array


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """{key: array} of an .npz file without executing anything from it (np.load(allow_pickle=True)
    would run whatever a crafted pickle asks for)."""
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            if not member.filename.endswith(".npy"):
                continue
            with archive.open(member) as stream:
                arrays[member.filename[:-4]] = read_npy(io.BufferedReader(stream), member.file_size)
    return arrays


def load_scene(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an official scene_info file; MegaDepthError naming it when it is not one."""
    try:
        info = read_npz(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError,
            AttributeError, TypeError, IndexError, KeyError, MemoryError) as error:
        raise MegaDepthError(f"scene file {path} could not be read: {error}") from None
    missing = [k for k in SCENE_KEYS if k not in info]
    if missing:
        raise MegaDepthError(f"scene file {path} lacks {', '.join(missing)}")
    for key in ("image_paths", "depth_paths"):  # names read from a data file stay inside the root
        for name in info[key]:
            if name is not None:
                try:
                    safe_relative_name(str(name), f"{path} {key}")
                except UnsafePathError as error:
                    raise MegaDepthError(str(error)) from None
    return info


def eligible_pairs(info: dict[str, np.ndarray], config: MegaDepthConfig) -> np.ndarray:
    """(P, 2) image index pairs with overlap in range, scale ratio small enough and both depths known."""
    overlap, scale = info["overlap_matrix"], info["scale_ratio_matrix"]
    valid = (overlap >= config.min_overlap) & (overlap <= config.max_overlap) & (scale <= config.max_scale_ratio)
    has_depth = np.array([p is not None for p in info["depth_paths"]])
    valid &= has_depth[:, None] & has_depth[None, :]
    return np.stack(np.nonzero(valid), axis=1)


def shared_point(info: dict[str, np.ndarray], first: int, second: int, config: MegaDepthConfig,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    """(i, j) of a random 3D point seen in both images (official crop centre), or None."""
    if "points3D_id_to_2D" not in info:
        return None
    points1, points2 = info["points3D_id_to_2D"][first], info["points3D_id_to_2D"][second]
    shared = sorted(set(points1) & set(points2))
    if np.isfinite(config.max_scale_ratio) and "points3D_id_to_ndepth" in info:
        nd1, nd2 = info["points3D_id_to_ndepth"][first], info["points3D_id_to_ndepth"][second]
        shared = [p for p in shared if max(nd1[p] / nd2[p], nd2[p] / nd1[p]) <= config.max_scale_ratio]
    if not shared:
        return None
    point = shared[rng.integers(len(shared))]
    xy1, xy2 = np.asarray(points1[point], float), np.asarray(points2[point], float)
    return xy1[::-1].copy(), xy2[::-1].copy()


def sample_pairs(files: list[Path], config: MegaDepthConfig, rng: np.random.Generator) -> list[PairInfo]:
    pairs = []
    for path in files:
        info = load_scene(path)
        candidates = eligible_pairs(info, config)
        if len(candidates) == 0:
            logger.info("Scene %s has no eligible pair; skipped", path.stem)
            continue
        for index in rng.choice(len(candidates), config.pairs_per_scene):  # with replacement, as officially
            first, second = candidates[index]
            pairs.append(PairInfo(
                path.stem, (str(info["image_paths"][first]), str(info["image_paths"][second])),
                (str(info["depth_paths"][first]), str(info["depth_paths"][second])),
                (info["intrinsics"][first], info["intrinsics"][second]),
                (info["poses"][first], info["poses"][second]),
                shared_point(info, first, second, config, rng)))
    return pairs


def read_depth(path: Path) -> np.ndarray:
    try:
        with h5py.File(path, "r") as f:
            depth = np.asarray(f["/depth"], np.float32)
    except (OSError, KeyError) as error:
        raise MegaDepthError(f"depth file {path} could not be read (expected HDF5 /depth): {error}") from error
    if depth.ndim != 2 or (depth < 0).any():
        raise MegaDepthError(f"depth file {path}: expected a non-negative (H, W) map")
    return depth


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise MegaDepthError(f"image {path} could not be read")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def interpolate_depth(depth: np.ndarray, pos_ij: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear depth at (N, 2) (i, j) and the mask of positions whose 4 corners are inside and > 0."""
    height, width = depth.shape
    i, j = pos_ij[:, 0], pos_ij[:, 1]
    i0, j0, i1, j1 = np.floor(i), np.floor(j), np.ceil(i), np.ceil(j)
    valid = (i0 >= 0) & (j0 >= 0) & (i1 < height) & (j1 < width)
    ii0, jj0, ii1, jj1 = (np.clip(a, 0, n - 1).astype(int) for a, n in
                          ((i0, height), (j0, width), (i1, height), (j1, width)))
    corners = np.stack([depth[ii0, jj0], depth[ii0, jj1], depth[ii1, jj0], depth[ii1, jj1]])
    valid &= (corners > 0).all(axis=0)
    wi, wj = i - i0, j - j0
    values = ((1 - wi) * (1 - wj) * corners[0] + (1 - wi) * wj * corners[1]
              + wi * (1 - wj) * corners[2] + wi * wj * corners[3])
    return values, valid


def warp_depth(pos1_ij: np.ndarray, depth1: np.ndarray, k1: np.ndarray, pose1: np.ndarray, offset1: np.ndarray,
               depth2: np.ndarray, k2: np.ndarray, pose2: np.ndarray, offset2: np.ndarray,
               tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Crop-1 positions (N, 2) (i, j) -> crop-2 positions (N, 2) and the mask of depth-consistent ones.

    offsets are the crops' top-left (i, j) in the full images; poses are cam_from_world 4x4.
    """
    z1, valid = interpolate_depth(depth1, pos1_ij)
    u1 = pos1_ij[:, 1] + offset1[1] + 0.5  # COLMAP convention: pixel centre at +0.5
    v1 = pos1_ij[:, 0] + offset1[0] + 0.5
    xyz1 = np.stack([(u1 - k1[0, 2]) * z1 / k1[0, 0], (v1 - k1[1, 2]) * z1 / k1[1, 1], z1, np.ones_like(z1)])
    xyz2 = (pose2 @ np.linalg.inv(pose1) @ xyz1)[:3]
    z2_est = xyz2[2]
    valid &= z2_est > 0
    uv2 = (k2 @ xyz2)[:2] / np.where(z2_est > 0, z2_est, 1.0)
    pos2_ij = np.stack([uv2[1] - offset2[0] - 0.5, uv2[0] - offset2[1] - 0.5], axis=1)
    z2, valid2 = interpolate_depth(depth2, pos2_ij)
    valid &= valid2 & (np.abs(z2_est - z2) < tolerance)
    return pos2_ij, valid


def crop_origin(centre_ij: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    """Top-left (i, j) of a size x size crop centred at centre_ij, shifted to stay inside (official)."""
    origin = np.maximum(centre_ij.astype(int) - size // 2, 0)
    return np.minimum(origin, np.maximum(np.array(shape) - size, 0))


def crop(array: np.ndarray, origin: np.ndarray, size: int) -> np.ndarray:
    """size x size crop at origin, zero-padded where the image is smaller than the crop."""
    out = np.zeros((size, size) + array.shape[2:], array.dtype)
    part = array[origin[0]:origin[0] + size, origin[1]:origin[1] + size]
    out[:part.shape[0], :part.shape[1]] = part
    return out


class MegaDepthPairs(torch.utils.data.Dataset):
    """Pairs of crop_size^2 crops with depth-warped correspondences.

    `item(epoch, index)` draws the epoch's pairs (seeded by (seed, epoch); validation: always seed
    42, as officially) on first use; the number of pairs per epoch is fixed, pairs_per_scene times
    the scenes that have an eligible pair. `dataset[index]` is `item(0, index)`.
    """

    def __init__(self, root: Path, scenes: list[str] | None = None, config: MegaDepthConfig = MegaDepthConfig(),
                 seed: int = 0, validation: bool = False) -> None:
        self.root, self.config, self.seed, self.validation = Path(root), config, seed, validation
        self.files = scene_files(self.root, scenes)
        self.epoch_pairs: dict[int, list[PairInfo]] = {}
        self.length = len(self.pairs(0))

    def pairs(self, epoch: int) -> list[PairInfo]:
        if self.validation:
            epoch = 0
        if epoch not in self.epoch_pairs:
            rng = np.random.default_rng(42 if self.validation else [self.seed, epoch])
            pairs = sample_pairs(self.files, self.config, rng)
            if not pairs:
                raise MegaDepthError(f"no eligible MegaDepth pairs below {self.root}")
            self.epoch_pairs = {epoch: pairs}  # keep one epoch in memory
        return self.epoch_pairs[epoch]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> PairSample:
        return self.item(0, index)

    def item(self, epoch: int, index: int) -> PairSample:
        pair = self.pairs(epoch)[index]
        size = self.config.crop_size
        images = [read_rgb(self.root / p) for p in pair.image_paths]
        depths = [read_depth(self.root / p) for p in pair.depth_paths]
        for image, depth, name in zip(images, depths, pair.image_paths):
            if image.shape[:2] != depth.shape:
                raise MegaDepthError(f"image {name} is {image.shape[:2]} but its depth map is {depth.shape}")
        centres = pair.centre_ij or self.fallback_centres(pair, depths, index)
        origins = [crop_origin(c, d.shape, size) for c, d in zip(centres, depths)]
        crops = [crop(d, o, size) for d, o in zip(depths, origins)]
        cells, pixels = cell_grid_pixels(size, size)
        pos2, valid = warp_depth(pixels, crops[0], pair.intrinsics[0], pair.poses[0], origins[0],
                                 crops[1], pair.intrinsics[1], pair.poses[1], origins[1],
                                 self.config.depth_tolerance)
        correspondences = Correspondences(torch.from_numpy(cells[valid]).long(),
                                          torch.from_numpy(pos2[valid]).float())
        return PairSample(image_tensor(crop(images[0], origins[0], size)),
                          image_tensor(crop(images[1], origins[1], size)), correspondences)

    def fallback_centres(self, pair: PairInfo, depths: list[np.ndarray], index: int
                         ) -> tuple[np.ndarray, np.ndarray]:
        """Without points3D_id_to_2D: a random image-1 pixel with known depth that reprojects
        consistently into image 2 (full images), or the image centres if none is found."""
        rng = np.random.default_rng([self.seed, index])
        candidates = np.argwhere(depths[0] > 0)
        if len(candidates):
            picks = candidates[rng.choice(len(candidates), min(256, len(candidates)), replace=False)].astype(float)
            pos2, valid = warp_depth(picks, depths[0], pair.intrinsics[0], pair.poses[0], np.zeros(2),
                                     depths[1], pair.intrinsics[1], pair.poses[1], np.zeros(2),
                                     self.config.depth_tolerance)
            if valid.any():
                first = int(np.argmax(valid))
                return picks[first], pos2[first]
        return np.array(depths[0].shape) / 2, np.array(depths[1].shape) / 2
