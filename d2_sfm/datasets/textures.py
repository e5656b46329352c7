"""Collage textures cut from real photographs bundled with scikit-image (offline, no download).

Only files shipped inside the scikit-image wheel are used (never the pooch-downloaded ones), and
only those the scikit-image docs mark CC0 or public domain. Collages of randomly scaled, flipped
and tinted crops give every surface its own texture, rich in corners and blobs for D2-Net, while
staying deterministic for a given numpy Generator.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from . import DatasetError

logger = logging.getLogger(__name__)

# file name -> fraction of the image kept around its centre (the retina is a disc on black)
PHOTOS: dict[str, float] = {
    "astronaut.png": 1.0,   # public domain (NASA)
    "camera.png": 1.0,      # CC0 (Lav Varshney)
    "brick.png": 1.0,       # CC0 (cc0textures Bricks25)
    "grass.png": 1.0,       # CC0 (cc0textures)
    "gravel.png": 1.0,      # CC0 (cc0textures Gravel04)
    "coins.png": 1.0,       # no known copyright restrictions
    "chelsea.png": 1.0,     # CC0 (Stefan van der Walt)
    "coffee.png": 1.0,      # CC0 (Rachel Michetti)
    "rocket.jpg": 1.0,      # public domain (SpaceX)
    "retina.jpg": 0.6,      # CC0
    "moon.png": 1.0,        # no known copyright restrictions
}


def photo_dir() -> Path:
    """scikit-image's bundled data folder; raises DatasetError if scikit-image is missing."""
    try:
        import skimage.data
    except ImportError as error:  # optional dependency (extra "data")
        raise DatasetError("synthetic scenes need scikit-image's bundled photographs: "
                           "pip install 'scikit-image>=0.22' (extra 'data' of d2_sfm)") from error
    return Path(skimage.data.data_dir)


@lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """One bundled photograph as RGB uint8 (H, W, 3), centre-cropped per PHOTOS; cached."""
    path = photo_dir() / name
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"{path}: bundled scikit-image photograph missing or unreadable")
    keep = PHOTOS.get(name, 1.0)
    h, w = image.shape[:2]
    y0, x0 = int(h * (1 - keep) / 2), int(w * (1 - keep) / 2)
    rgb = cv2.cvtColor(image[y0:h - y0, x0:w - x0], cv2.COLOR_BGR2RGB)
    rgb.setflags(write=False)  # shared through the cache
    return rgb


def load_photos() -> tuple[np.ndarray, ...]:
    """All photographs of PHOTOS, in a fixed order."""
    return tuple(load_photo(name) for name in PHOTOS)


def tinted(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random per-channel gains and offset (a uint8 lookup table), so re-used crops differ in colour."""
    gains = rng.uniform(0.55, 1.25, size=3)
    offset = rng.uniform(-25, 25, size=3)
    lut = np.clip(np.arange(256)[:, None] * gains + offset, 0, 255).astype(np.uint8)
    return cv2.LUT(image, lut.reshape(256, 1, 3))


def random_patch(photo: np.ndarray, size_wh: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random crop of `photo` resized to `size_wh` (uint8 RGB), maybe rotated by 90 degrees
    and mirrored, then tinted. The crop is at most the size of the patch (no upsampling blur
    beyond 2x)."""
    w, h = size_wh
    rotate = rng.random() < 0.5
    tw, th = (h, w) if rotate else (w, h)            # size before the rotation
    ph, pw = photo.shape[:2]
    scale = max(tw / pw, th / ph) * rng.uniform(1.0, 2.0)
    cw, ch = min(pw, int(np.ceil(tw / scale))), min(ph, int(np.ceil(th / scale)))
    x0, y0 = rng.integers(0, pw - cw + 1), rng.integers(0, ph - ch + 1)
    patch = cv2.resize(photo[y0:y0 + ch, x0:x0 + cw], (tw, th), interpolation=cv2.INTER_LINEAR)
    if rotate:
        patch = cv2.rotate(patch, cv2.ROTATE_90_COUNTERCLOCKWISE)
    if rng.random() < 0.5:
        patch = cv2.flip(patch, 1)
    return tinted(patch, rng)


def collage(size_wh: tuple[int, int], rng: np.random.Generator, patch_size: int = 96,
            photos: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
    """A texture (H, W, 3) uint8 RGB: a full-size photo background under overlapping crops.

    About one patch per `patch_size`^2 pixels, each 0.5-2x `patch_size` per side. `photos`
    (RGB uint8) replaces the bundled PHOTOS, e.g. the training pool of d2_sfm.training.photos;
    None keeps the synthetic datasets' textures exactly as before.
    """
    w, h = size_wh
    photos = load_photos() if photos is None else photos
    canvas = random_patch(photos[rng.integers(len(photos))], (w, h), rng)
    num_patches = max(1, int(round(w * h / patch_size ** 2)))
    for _ in range(num_patches):
        pw = int(min(w, rng.uniform(0.5, 2.0) * patch_size))
        ph = int(min(h, rng.uniform(0.5, 2.0) * patch_size))
        x0, y0 = rng.integers(0, w - pw + 1), rng.integers(0, h - ph + 1)
        canvas[y0:y0 + ph, x0:x0 + pw] = random_patch(photos[rng.integers(len(photos))], (pw, ph), rng)
    return canvas
