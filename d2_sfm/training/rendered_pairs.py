"""MegaDepth-like training pairs with real 3D structure, rendered from photo-textured scenes.

A random site (ground, walls, boxes, slanted panels; every surface its own collage of training
photographs) is rendered from two cameras looking at the same spot from different directions,
distances, heights and rolls. The renderer (d2_sfm.datasets.render) gives per-pixel depth, so
correspondences are made exactly as D2-Net's MegaDepth loader makes them
(d2_sfm.training.megadepth.warp_depth): every train-net cell of view 1 (pixel 8p + 3.5) is lifted
with its depth, moved by the relative pose, projected into view 2 and kept only when view 2's depth
there agrees (|z_est - z_2| < tolerance): points hidden behind something in view 2, seen on the
sky/background, or outside view 2 are excluded. One view then gets an appearance change (lighting,
night with lamps and noise, blur, JPEG), the other only mild jitter.

Conventions: the renderer's pixel centres are COLMAP's (+0.5), warp_depth handles that; training
positions are integer = pixel centre, like every other PairSample.
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..datasets.render import PinholeCamera, Quad, Scene, apply_night, look_at, render
from ..datasets.scenes import Box
from ..datasets.textures import collage
from .losses import Correspondences
from .megadepth import warp_depth
from .pairs import PairSample, cell_grid_pixels, image_tensor
from .synthetic_pairs import PhotometricConfig, photometric

logger = logging.getLogger(__name__)

TEXELS_PER_METRE = 48  # about one texel per pixel at the cameras' usual distances
MAX_TEXTURE_SIDE = 512
MILD = PhotometricConfig(gamma=(0.85, 1.2), colour_gain=0.08, contrast=(0.85, 1.15), brightness=10.0,
                         night_probability=0.0, grey_probability=0.1, blur_probability=0.1,
                         max_blur_sigma=0.8, noise_probability=0.3, noise_sigma=(1.0, 6.0))


@dataclass(frozen=True)
class RenderConfig:
    crop_size: int = 256  # both views are rendered at crop_size x crop_size (a multiple of 8)
    hfov_deg: tuple[float, float] = (45.0, 75.0)
    distance: tuple[float, float] = (4.0, 9.0)  # view 1's distance to the look-at point, metres
    max_azimuth_change_deg: float = 40.0  # view 2 circles the look-at point by up to this much
    distance_ratio: tuple[float, float] = (0.7, 1.4)  # view 2 / view 1 (log-uniform)
    max_roll_deg: float = 12.0
    depth_tolerance: float = 0.05  # metres, D2-Net's MegaDepth value
    min_correspondences: int = 160  # fewer: draw other cameras (up to `tries` times)
    tries: int = 8
    scenes_per_epoch: int = 64  # each pair uses one of these sites (seeded by (seed, epoch, k))
    cached_scenes: int = 64  # sites kept in memory per worker process
    change_probability: float = 0.9  # one view gets a strong appearance change


def textured_quad(origin, edge_u, edge_v, rng: np.random.Generator, photos: tuple[np.ndarray, ...]) -> Quad:
    """A quad with its own collage of `photos`, TEXELS_PER_METRE texels per metre."""
    edge_u, edge_v = np.asarray(edge_u, float), np.asarray(edge_v, float)
    size = [int(np.clip(np.linalg.norm(e) * TEXELS_PER_METRE, 16, MAX_TEXTURE_SIDE)) for e in (edge_u, edge_v)]
    texture = collage((size[0], size[1]), rng, patch_size=48, photos=photos)
    shade = rng.uniform(0.7, 1.0)  # faces differ in brightness, as under a distant light
    return Quad.create(origin, edge_u, edge_v, cv2.convertScaleAbs(texture, alpha=shade))


@dataclass(frozen=True, eq=False)
class Site:
    scene: Scene
    boxes: tuple[Box, ...]
    camera_azimuth_deg: float  # cameras stand around this direction, walls opposite


def random_site(rng: np.random.Generator, photos: tuple[np.ndarray, ...]) -> Site:
    """Ground 24 x 24 m, 1-3 walls on one side, 2-5 boxes and 0-2 slanted panels near the origin."""
    quads = [textured_quad([-12 + 12 * i, -12 + 12 * j, 0], [12, 0, 0], [0, 12, 0], rng, photos)
             for i in range(2) for j in range(2)]
    wall_azimuth = rng.uniform(0, 360)
    for _ in range(rng.integers(1, 4)):
        angle = math.radians(wall_azimuth + rng.uniform(-60, 60))
        distance, width, height = rng.uniform(4, 9), rng.uniform(6, 14), rng.uniform(3, 7)
        centre = distance * np.array([math.cos(angle), math.sin(angle), 0.0])
        yaw = angle + math.pi / 2 + math.radians(rng.uniform(-25, 25))
        along = np.array([math.cos(yaw), math.sin(yaw), 0.0]) * width
        quads.append(textured_quad(centre - along / 2, along, [0, 0, height], rng, photos))
    boxes = []
    for _ in range(rng.integers(2, 6)):
        size = tuple(rng.uniform([0.5, 0.5, 0.4], [2.5, 2.5, 2.5]))
        boxes.append(Box(tuple(rng.uniform(-3, 3, size=2)), size, rng.uniform(0, 90), 0.0))
    for box in boxes:
        corners = box.footprint()
        up = np.array([0.0, 0.0, box.size[2]])
        base = np.hstack([corners, np.zeros((4, 1))])
        quads += [textured_quad(base[i], base[(i + 1) % 4] - base[i], up, rng, photos) for i in range(4)]
        quads.append(textured_quad(base[0] + up, base[1] - base[0], base[3] - base[0], rng, photos))
    for _ in range(rng.integers(0, 3)):  # leaning panels: planes that are neither walls nor ground
        foot = np.append(rng.uniform(-4, 4, size=2), 0.0)
        yaw, tilt = rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(25, 65))
        along = np.array([math.cos(yaw), math.sin(yaw), 0.0]) * rng.uniform(1.5, 4)
        lean = np.array([-math.sin(yaw) * math.cos(tilt), math.cos(yaw) * math.cos(tilt), math.sin(tilt)])
        quads.append(textured_quad(foot, along, lean * rng.uniform(1.5, 3.5), rng, photos))
    background = tuple(int(v) for v in rng.integers(60, 220, size=3))
    return Site(Scene(tuple(quads), background), tuple(boxes), (wall_azimuth + 180) % 360)


def sample_cameras(site: Site, config: RenderConfig, rng: np.random.Generator
                   ) -> tuple[PinholeCamera, np.ndarray, PinholeCamera, np.ndarray]:
    """Two cameras (intrinsics, cam_from_world 3x4) looking at one spot near the origin."""
    size = config.crop_size
    target = np.append(rng.uniform(-2.5, 2.5, size=2), rng.uniform(0.3, 2.0))
    azimuth = site.camera_azimuth_deg + rng.uniform(-70, 70)
    distance = rng.uniform(*config.distance)
    views = []
    for k in range(2):
        if k == 1:
            azimuth += rng.uniform(-config.max_azimuth_change_deg, config.max_azimuth_change_deg)
            distance *= math.exp(rng.uniform(*np.log(config.distance_ratio)))
        for _ in range(20):  # not inside a box
            angle = math.radians(azimuth)
            centre = target[:2] + distance * np.array([math.cos(angle), math.sin(angle)])
            if not any(box.contains_xy(centre, 0.4) for box in site.boxes):
                break
            distance *= 1.15
        height = rng.uniform(0.8, 4.0)
        look = target + rng.uniform(-0.4, 0.4, size=3)
        pose = look_at(np.append(centre, height), look, roll_deg=rng.uniform(-config.max_roll_deg, config.max_roll_deg))
        views += [PinholeCamera.from_hfov(size, size, rng.uniform(*config.hfov_deg)), pose]
    return tuple(views)


def homogeneous(pose: np.ndarray) -> np.ndarray:
    return np.vstack([pose, [0, 0, 0, 1.0]])


def depth_correspondences(depth1: np.ndarray, camera1: PinholeCamera, pose1: np.ndarray, depth2: np.ndarray,
                          camera2: PinholeCamera, pose2: np.ndarray, tolerance: float) -> Correspondences:
    """Every train-net cell of view 1 with its depth-warped position in view 2, occluded and
    unseen points excluded (D2-Net's MegaDepth rule). Depths: (H, W), NaN where no surface."""
    height, width = depth1.shape
    cells, pixels_ij = cell_grid_pixels(height, width)
    pos2, valid = warp_depth(pixels_ij, np.nan_to_num(depth1, nan=0.0), camera1.K, homogeneous(pose1), np.zeros(2),
                             np.nan_to_num(depth2, nan=0.0), camera2.K, homogeneous(pose2), np.zeros(2), tolerance)
    return Correspondences(torch.from_numpy(cells[valid]).long(), torch.from_numpy(pos2[valid]).float())


def lamp_glow(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add 1-3 warm street-lamp glows (additive Gaussian blobs) to an RGB uint8 image."""
    h, w = image.shape[:2]
    out = image.astype(np.float32)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    for _ in range(rng.integers(1, 4)):
        cy, cx, sigma = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.05, 0.25) * max(h, w)
        glow = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma ** 2))[..., None]
        out += glow * rng.uniform(40, 140) * np.array([1.0, rng.uniform(0.7, 0.9), rng.uniform(0.3, 0.6)], np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def appearance_change(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A strong one-sided change: night (low light, lamps, noise) or relighting (gamma, gains,
    smooth shading field), then maybe blur, noise and JPEG. RGB uint8 in and out."""
    h, w = image.shape[:2]
    if rng.random() < 0.35:
        out = lamp_glow(apply_night(image, rng), rng)
    else:
        x = (image.astype(np.float32) / 255.0) ** math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
        field = cv2.resize(rng.uniform(0.5, 1.5, size=(3, 3)).astype(np.float32), (w, h),
                           interpolation=cv2.INTER_CUBIC)[..., None]
        x = x * field * rng.uniform(0.7, 1.3, size=3).astype(np.float32)
        out = np.clip(x * 255.0, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 2.0))
    if rng.random() < 0.4:
        noise = rng.normal(0, rng.uniform(2, 25), size=out.shape).astype(np.float32)
        out = np.clip(out.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    if rng.random() < 0.4:
        ok, encoded = cv2.imencode(".jpg", out[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(10, 60))])
        out = np.ascontiguousarray(cv2.imdecode(encoded, cv2.IMREAD_COLOR)[:, :, ::-1])
    return out


@dataclass(frozen=True, eq=False)
class RenderedPair:
    """Both views with what the ground truth needs (validation uses it at keypoints)."""
    image1: np.ndarray
    image2: np.ndarray
    depth1: np.ndarray
    depth2: np.ndarray
    camera1: PinholeCamera
    pose1: np.ndarray
    camera2: PinholeCamera
    pose2: np.ndarray
    correspondences: Correspondences


class RenderedPairs(torch.utils.data.Dataset):
    """`length` pairs per epoch; pair k of epoch e is a pure function of (seed, e, k) and the photos.

    Sites are the expensive part (textures): each epoch has `scenes_per_epoch` of them, built on
    first use and kept in a per-process LRU cache, so a DataLoader worker builds each site once.
    """

    def __init__(self, photos: tuple[np.ndarray, ...], length: int, seed: int = 0,
                 config: RenderConfig = RenderConfig(), augment: bool = True) -> None:
        if not photos:
            raise ValueError("RenderedPairs needs at least one photo")
        if config.crop_size % 8:
            raise ValueError(f"crop_size must be a multiple of 8, got {config.crop_size}")
        self.photos, self.length, self.seed, self.config, self.augment = photos, length, seed, config, augment
        self.sites: OrderedDict[tuple[int, int], Site] = OrderedDict()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> PairSample:
        return self.item(0, index)

    def site(self, epoch: int, number: int) -> Site:
        key = (epoch, number)
        if key in self.sites:
            self.sites.move_to_end(key)
        else:
            self.sites[key] = random_site(np.random.default_rng([self.seed, epoch, number, 7]), self.photos)
            while len(self.sites) > self.config.cached_scenes:
                self.sites.popitem(last=False)
        return self.sites[key]

    def pair(self, epoch: int, index: int) -> RenderedPair:
        """The rendered pair with its ground truth (no augmentation)."""
        rng = np.random.default_rng([self.seed, epoch, index])
        site = self.site(epoch, int(rng.integers(self.config.scenes_per_epoch)))
        best = None
        for _ in range(self.config.tries):
            camera1, pose1, camera2, pose2 = sample_cameras(site, self.config, rng)
            first, second = render(site.scene, camera1, pose1), render(site.scene, camera2, pose2)
            matches = depth_correspondences(first.depth, camera1, pose1, second.depth, camera2, pose2,
                                            self.config.depth_tolerance)
            candidate = RenderedPair(first.image, second.image, first.depth, second.depth, camera1, pose1,
                                     camera2, pose2, matches)
            if best is None or len(matches) > len(best.correspondences):
                best = candidate
            if len(matches) >= self.config.min_correspondences:
                break
        return best

    def item(self, epoch: int, index: int) -> PairSample:
        pair = self.pair(epoch, index)
        image1, image2 = pair.image1, pair.image2
        if self.augment:
            rng = np.random.default_rng([self.seed, epoch, index, 1])
            image1, image2 = photometric(image1, MILD, rng), photometric(image2, MILD, rng)
            if rng.random() < self.config.change_probability:
                if rng.random() < 0.5:
                    image1 = appearance_change(image1, rng)
                else:
                    image2 = appearance_change(image2, rng)
        return PairSample(image_tensor(image1), image_tensor(image2), pair.correspondences)


class MixedPairs(torch.utils.data.Dataset):
    """Rendered 3D pairs and homography pairs: pair k draws its kind from (seed, epoch, k)."""

    def __init__(self, rendered: RenderedPairs, homography, homography_share: float, seed: int = 0) -> None:
        if not 0 <= homography_share <= 1:
            raise ValueError(f"homography share must be in [0, 1], got {homography_share}")
        self.rendered, self.homography, self.share, self.seed = rendered, homography, homography_share, seed

    def __len__(self) -> int:
        return len(self.rendered)

    def __getitem__(self, index: int) -> PairSample:
        return self.item(0, index)

    def item(self, epoch: int, index: int) -> PairSample:
        if np.random.default_rng([self.seed, epoch, index, 3]).random() < self.share:
            return self.homography.item(epoch, index)
        return self.rendered.item(epoch, index)
