"""Synthetic training pairs that need no download: random crops of scikit-image's bundled photographs,
warped by random homographies and photometric changes, with exact dense correspondences.

Each pair is two views of one source photo. View k is rendered as image_k(q) = source(S_k q), with
S_k = source_from_image_k a 3x3 homography (pixel coordinates x right, y down, integer = pixel
centre, the convention of cv2.warpPerspective). View 1 is an axis-aligned square; view 2 a
rotated, rescaled, shifted and perspective-distorted quadrilateral around it. The correspondence
of an image-1 pixel p is S_2^-1 S_1 p, kept when it lands inside image 2 and inside the source.

Photos (scikit-image `skimage.data`, shipped in the wheel, no download), with the licences its
docstrings state: see SOURCE_PHOTOS.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .losses import Correspondences
from .pairs import PairSample, cell_grid_pixels, image_tensor

# name in skimage.data -> licence stated in its docstring (all bundled with the scikit-image wheel).
SOURCE_PHOTOS = {
    "astronaut": "public domain (NASA)",
    "camera": "CC0 (Lav Varshney)",
    "chelsea": "CC0 (Stefan van der Walt)",
    "coffee": "CC0 (Rachel Michetti)",
    "rocket": "public domain (SpaceX)",
    "coins": "no known copyright restrictions (Brooklyn Museum)",
    "brick": "CC0 (CC0Textures Bricks25)",
    "grass": "CC0 (CC0Textures)",
    "gravel": "CC0 (CC0Textures Gravel04)",
}


def load_source_photos(names: tuple[str, ...] | None = None) -> list[np.ndarray]:
    """The bundled photos as RGB uint8 (H, W, 3); grey ones repeated to 3 channels."""
    from skimage import data  # optional dependency (extra "data")

    photos = []
    for name in names or tuple(SOURCE_PHOTOS):
        image = np.asarray(getattr(data, name)())
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        photos.append(np.ascontiguousarray(image[:, :, :3]))
    return photos


@dataclass(frozen=True)
class WarpConfig:
    crop_size: int = 256  # output side in pixels (a multiple of 8)
    source_scale: tuple[float, float] = (0.5, 1.5)  # side of view 1 in the source / crop_size
    scale_ratio: tuple[float, float] = (0.7, 1.4)  # side of view 2 / side of view 1 (log-uniform)
    max_rotation_deg: float = 25.0
    max_shift: float = 0.15  # shift of view 2's centre, as a fraction of view 1's side
    max_perspective: float = 0.12  # independent shift of each of view 2's corners, fraction of its side

    def scaled(self, strength: float) -> "WarpConfig":
        """Milder (< 1) or stronger (> 1) geometry: rotation, log scale ratio, shift and perspective
        multiplied by `strength`."""
        low, high = (math.exp(strength * math.log(r)) for r in self.scale_ratio)
        return WarpConfig(self.crop_size, self.source_scale, (low, high), strength * self.max_rotation_deg,
                          strength * self.max_shift, strength * self.max_perspective)


@dataclass(frozen=True)
class PhotometricConfig:
    gamma: tuple[float, float] = (0.6, 1.6)  # log-uniform
    colour_gain: float = 0.15  # per-channel gain in [1 - g, 1 + g]
    contrast: tuple[float, float] = (0.7, 1.3)
    brightness: float = 20.0
    night_probability: float = 0.2  # darken to 15..40 %, then stronger noise
    grey_probability: float = 0.15
    blur_probability: float = 0.3
    max_blur_sigma: float = 1.5
    noise_probability: float = 0.5
    noise_sigma: tuple[float, float] = (1.0, 60.0)  # log-uniform, in grey levels (KAZE iguazu: ~25..77)


def square_corners(size: int) -> np.ndarray:
    """Corners of a size x size image (pixel centres), clockwise from the top-left: (4, 2) x, y."""
    s = size - 1
    return np.array([[0, 0], [s, 0], [s, s], [0, s]], np.float64)


def sample_views(source_hw: tuple[int, int], config: WarpConfig, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Random source_from_image1 and source_from_image2 homographies (3x3) for one source photo."""
    height, width = source_hw
    size = config.crop_size
    side1 = min(rng.uniform(*config.source_scale) * size, 0.95 * min(height, width))
    centre = np.array([rng.uniform(side1 / 2, width - side1 / 2), rng.uniform(side1 / 2, height - side1 / 2)])
    unit = square_corners(size) / (size - 1) - 0.5  # corners of a unit square centred at 0
    corners1 = centre + side1 * unit

    side2 = side1 * math.exp(rng.uniform(*np.log(config.scale_ratio)))
    angle = math.radians(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg))
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    jitter = rng.uniform(-config.max_perspective, config.max_perspective, size=(4, 2))
    shift = rng.uniform(-config.max_shift, config.max_shift, size=2) * side1
    corners2 = centre + shift + side2 * (unit + jitter) @ rotation.T

    image_corners = square_corners(size).astype(np.float32)
    source_from_image1 = cv2.getPerspectiveTransform(image_corners, corners1.astype(np.float32))
    source_from_image2 = cv2.getPerspectiveTransform(image_corners, corners2.astype(np.float32))
    return source_from_image1, source_from_image2


def apply_homography(homography: np.ndarray, points_xy: np.ndarray) -> np.ndarray:
    """(N, 2) x, y -> (N, 2) x, y."""
    points = np.concatenate([points_xy, np.ones((len(points_xy), 1))], axis=1) @ homography.T
    return points[:, :2] / points[:, 2:]


def render(source: np.ndarray, source_from_image: np.ndarray, size: int) -> np.ndarray:
    """image(q) = source(H q) for q in a size x size grid (bilinear; outside the source: 0).

    Large shrink factors are pre-blurred against aliasing (sigma 0.5 per unit of shrink beyond 1).
    """
    shrink = math.sqrt(abs(np.linalg.det(source_from_image[:2, :2] / source_from_image[2, 2])))
    if shrink > 1.25 and source.dtype == np.uint8:
        source = cv2.GaussianBlur(source, (0, 0), 0.5 * (shrink - 1))
    return cv2.warpPerspective(source, source_from_image, (size, size),
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def homography_correspondences(source_from_image1: np.ndarray, source_from_image2: np.ndarray,
                               source_hw: tuple[int, int], size: int) -> Correspondences:
    """Every train-net cell of image 1 (pixel 8p + 3.5) with its exact position in image 2."""
    cells, pixels_ij = cell_grid_pixels(size, size)
    source_xy = apply_homography(source_from_image1, pixels_ij[:, ::-1])
    image2_xy = apply_homography(np.linalg.inv(source_from_image2), source_xy)
    height, width = source_hw
    keep = ((source_xy >= 0).all(axis=1) & (source_xy[:, 0] <= width - 1) & (source_xy[:, 1] <= height - 1)
            & (image2_xy >= 0).all(axis=1) & (image2_xy <= size - 1).all(axis=1))
    return Correspondences(torch.from_numpy(cells[keep]).long(),
                           torch.from_numpy(np.ascontiguousarray(image2_xy[keep, ::-1])).float())


def photometric(image: np.ndarray, config: PhotometricConfig, rng: np.random.Generator) -> np.ndarray:
    """Random gamma, colour cast, contrast/brightness, night darkening, grey, blur and noise (uint8)."""
    x = image.astype(np.float32) / 255.0
    x = x ** math.exp(rng.uniform(*np.log(config.gamma)))
    x = x * rng.uniform(1 - config.colour_gain, 1 + config.colour_gain, size=3).astype(np.float32)
    x = x * rng.uniform(*config.contrast) + rng.uniform(-config.brightness, config.brightness) / 255.0
    noise_sigma = 0.0
    if rng.random() < config.noise_probability:
        noise_sigma = math.exp(rng.uniform(*np.log(config.noise_sigma)))
    if rng.random() < config.night_probability:
        x = np.clip(x, 0, 1) ** 1.3 * rng.uniform(0.15, 0.4)
        noise_sigma = max(noise_sigma, rng.uniform(2, 15))
    grey = rng.random() < config.grey_probability
    if rng.random() < config.blur_probability:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.3, config.max_blur_sigma))
    x = x * 255.0
    if noise_sigma > 0:
        x = x + rng.normal(0, noise_sigma, size=x.shape).astype(np.float32)
    if grey:  # last, so that a grey image stays grey (like the .pgm test sequences)
        x = np.repeat(x @ np.array([0.299, 0.587, 0.114], np.float32), 3).reshape(x.shape)
    return np.clip(x, 0, 255).round().astype(np.uint8)


class SyntheticPairs(torch.utils.data.Dataset):
    """`length` pairs; pair k is a pure function of (seed, epoch, k), so runs are reproducible."""

    def __init__(self, photos: list[np.ndarray], length: int, seed: int = 0,
                 warp: WarpConfig = WarpConfig(), photometric_config: PhotometricConfig = PhotometricConfig(),
                 augment: bool = True) -> None:
        if not photos:
            raise ValueError("SyntheticPairs needs at least one source photo")
        if warp.crop_size % 8:
            raise ValueError(f"crop_size must be a multiple of 8, got {warp.crop_size}")
        self.photos, self.length, self.seed = photos, length, seed
        self.warp, self.photometric_config, self.augment = warp, photometric_config, augment

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> PairSample:
        return self.item(0, index)

    def item(self, epoch: int, index: int) -> PairSample:
        rng = np.random.default_rng([self.seed, epoch, index])
        source = self.photos[rng.integers(len(self.photos))]
        source_from_1, source_from_2 = sample_views(source.shape[:2], self.warp, rng)
        size = self.warp.crop_size
        image1 = render(source, source_from_1, size)
        image2 = render(source, source_from_2, size)
        if self.augment:
            image1 = photometric(image1, self.photometric_config, rng)
            image2 = photometric(image2, self.photometric_config, rng)
        correspondences = homography_correspondences(source_from_1, source_from_2, source.shape[:2], size)
        return PairSample(image_tensor(image1), image_tensor(image2), correspondences)
