"""The photographs that texture the training scenes, from installable packages only (no download).

Every source is a file shipped inside a Python wheel; a package that is not installed simply
contributes nothing (logged once). Nothing here comes from an evaluation set (graffiti, boat,
iguazu, EVD, the ../shared/data/sfm scenes). Training and validation photos are disjoint:
VALIDATION_PHOTOS are never used to make training pairs, and the split does not depend on which
packages are installed.

Licences (also written into each model card by `licence_lines`):
- scikit-image (`skimage/data/`): as its docstrings state, CC0 or public domain (see LICENCES).
- scikit-learn (`sklearn/datasets/images/`): china.jpg and flower.jpg, CC BY 2.0 (Flickr users
  danielbuechele and vultilion, retrieved by Robert Layton; sklearn's images/README.txt).
- matplotlib (`mpl-data/sample_data/`): grace_hopper.jpg, US Navy photograph, public domain.
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from ..errors import D2SfmError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Photo:
    package: str  # "skimage" | "sklearn" | "matplotlib"
    name: str  # file name inside the package's data folder
    licence: str
    keep: float = 1.0  # fraction kept around the centre (the retina is a disc on black)


PHOTOS: tuple[Photo, ...] = (
    Photo("skimage", "astronaut.png", "public domain (NASA)"),
    Photo("skimage", "camera.png", "CC0 (Lav Varshney)"),
    Photo("skimage", "brick.png", "CC0 (cc0textures Bricks25)"),
    Photo("skimage", "grass.png", "CC0 (cc0textures)"),
    Photo("skimage", "gravel.png", "CC0 (cc0textures Gravel04)"),
    Photo("skimage", "coins.png", "no known copyright restrictions (Brooklyn Museum)"),
    Photo("skimage", "chelsea.png", "CC0 (Stefan van der Walt)"),
    Photo("skimage", "coffee.png", "CC0 (Rachel Michetti)"),
    Photo("skimage", "rocket.jpg", "public domain (SpaceX)"),
    Photo("skimage", "retina.jpg", "CC0", keep=0.6),
    Photo("skimage", "moon.png", "no known copyright restrictions"),
    Photo("skimage", "hubble_deep_field.jpg", "public domain (NASA)"),
    Photo("skimage", "cell.png", "CC0"),
    Photo("skimage", "clock_motion.png", "public domain (Stefan van der Walt)"),
    Photo("sklearn", "china.jpg", "CC BY 2.0 (danielbuechele, Flickr)"),
    Photo("sklearn", "flower.jpg", "CC BY 2.0 (vultilion, Flickr)"),
    Photo("matplotlib", "grace_hopper.jpg", "public domain (US Navy)"),
)
# Held out for checkpoint selection: never in a training pair. Both ship with scikit-image, the
# one package every training run needs, so the split is the same on every machine.
VALIDATION_PHOTOS = ("chelsea.png", "rocket.jpg")


class PhotoError(D2SfmError):
    """A training photograph is missing or unreadable."""


DATA_FOLDERS = {"skimage": ("skimage", "data"), "sklearn": ("sklearn", "datasets", "images"),
                "matplotlib": ("matplotlib", "mpl-data", "sample_data")}


@lru_cache(maxsize=None)
def package_dir(package: str) -> Path | None:
    """The data folder of an installed package, None when it is not installed. Found with
    importlib's spec only: importing sklearn or matplotlib would cost seconds per process."""
    if package not in DATA_FOLDERS:
        raise ValueError(f"unknown photo package {package!r}")
    top, *parts = DATA_FOLDERS[package]
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)


@lru_cache(maxsize=None)
def load(photo: Photo) -> np.ndarray | None:
    """RGB uint8 (H, W, 3), centre-cropped per `keep`; None when its package is not installed."""
    folder = package_dir(photo.package)
    if folder is None:
        logger.info("%s is not installed: training photo %s skipped", photo.package, photo.name)
        return None
    path = folder / photo.name
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise PhotoError(f"{path}: training photograph missing or unreadable")
    h, w = image.shape[:2]
    y0, x0 = int(h * (1 - photo.keep) / 2), int(w * (1 - photo.keep) / 2)
    rgb = cv2.cvtColor(image[y0:h - y0, x0:w - x0], cv2.COLOR_BGR2RGB)
    rgb.setflags(write=False)  # shared through the cache
    return rgb


def selected(split: str) -> tuple[Photo, ...]:
    """The photos of `split` ("train" or "validation") whose package is installed."""
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    chosen = [p for p in PHOTOS if (p.name in VALIDATION_PHOTOS) == (split == "validation")]
    return tuple(p for p in chosen if load(p) is not None)


def pool(split: str) -> tuple[np.ndarray, ...]:
    """The RGB images of `split`; PhotoError when none is available (scikit-image missing)."""
    images = tuple(load(p) for p in selected(split))
    if not images:
        raise PhotoError("no training photographs available: pip install 'scikit-image>=0.22' "
                         "(optionally scikit-learn and matplotlib for a wider pool)")
    return images


def licence_lines(split: str) -> list[str]:
    """'package/name: licence' for each photo of the split in use (for the model card)."""
    return [f"{p.package}/{p.name}: {p.licence}" for p in selected(split)]
