"""A small renderer for piecewise-planar scenes textured with photographs.

Each textured quad is drawn through the homography between its texture and the image (inverted,
so every pixel looks its texel up: correct for quads that cross the camera plane), with mip-mapped
bilinear sampling and a per-pixel z-buffer. Besides the RGB image the renderer returns the depth
and the world point seen at every pixel centre, which is the ground truth of the synthetic
datasets (InLoc's `XYZcut`, Aachen's sparse points, covisibility).

Conventions: `cam_from_world` is a (3, 4) matrix [R | t] mapping world to camera coordinates,
camera axes x right, y down, z forward (COLMAP). Pixel coordinates are COLMAP's: the centre of the
top-left pixel is (0.5, 0.5), so pixel (row i, column j) is the point (j + 0.5, i + 0.5).
The renderer imports neither pycolmap nor torch.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

logger = logging.getLogger(__name__)

MIN_MIP_SIZE = 8
# Bumped whenever the same scene and pose render differently, so that stored renderings are redone.
# 2: mip levels sampled at their true texel centres (level 1 and coarser sat up to 0.5 px off).
RENDERER_VERSION = 2


@dataclass(frozen=True)
class PinholeCamera:
    """Pinhole intrinsics in COLMAP's pixel convention (principal point (W/2, H/2) = image centre)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def from_hfov(cls, width: int, height: int, hfov_deg: float) -> PinholeCamera:
        """Square pixels, centred principal point, horizontal field of view `hfov_deg`."""
        f = 0.5 * width / np.tan(np.deg2rad(hfov_deg) / 2)
        return cls(width, height, float(f), float(f), width / 2, height / 2)

    @property
    def K(self) -> np.ndarray:
        """(3, 3) calibration matrix."""
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float64)


def look_at(center: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 0.0, 1.0]),
            roll_deg: float = 0.0) -> np.ndarray:
    """cam_from_world (3, 4) of a camera at `center` looking at `target`, image y pointing down
    along -`up`, then rolled by `roll_deg` about the optical axis."""
    center = np.asarray(center, np.float64)
    z = np.asarray(target, np.float64) - center
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, np.float64))
    if np.linalg.norm(x) < 1e-9:
        raise ValueError(f"look_at: viewing direction {z} is parallel to the up vector {up}")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c, s = np.cos(np.deg2rad(roll_deg)), np.sin(np.deg2rad(roll_deg))
    rotation = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]]) @ np.stack([x, y, z])
    return np.hstack([rotation, (-rotation @ center)[:, None]])


def camera_center(cam_from_world: np.ndarray) -> np.ndarray:
    """World position (3,) of the camera centre."""
    return -cam_from_world[:, :3].T @ cam_from_world[:, 3]


def project(points_world: np.ndarray, camera: PinholeCamera, cam_from_world: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) world points -> COLMAP pixel coordinates (N, 2) and depths (N,) (z in camera)."""
    points_cam = points_world @ cam_from_world[:, :3].T + cam_from_world[:, 3]
    depth = points_cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = np.stack([camera.fx * points_cam[:, 0] / depth + camera.cx,
                       camera.fy * points_cam[:, 1] / depth + camera.cy], axis=1)
    return uv, depth


def mipmaps(texture: np.ndarray) -> tuple[np.ndarray, ...]:
    """The texture and its cv2.pyrDown halvings down to MIN_MIP_SIZE pixels."""
    levels = [np.ascontiguousarray(texture)]
    while min(levels[-1].shape[:2]) >= 2 * MIN_MIP_SIZE:
        levels.append(cv2.pyrDown(levels[-1]))
    return tuple(levels)


@dataclass(frozen=True, eq=False)
class Quad:
    """A textured parallelogram: world points origin + s * edge_u + t * edge_v for s, t in [0, 1].

    Texture column x covers s in [x, x + 1) / width, row y covers t in [y, y + 1) / height.
    `scannable=False` marks surfaces a depth scanner misses (e.g. windows): InLoc cutouts get NaN
    there. Both sides of a quad are visible.
    """

    origin: np.ndarray
    edge_u: np.ndarray
    edge_v: np.ndarray
    levels: tuple[np.ndarray, ...]
    scannable: bool = True

    @classmethod
    def create(cls, origin, edge_u, edge_v, texture: np.ndarray, scannable: bool = True) -> Quad:
        if texture.ndim != 3 or texture.shape[2] != 3 or texture.dtype != np.uint8:
            raise ValueError(f"Quad texture must be (H, W, 3) uint8, got {texture.shape} {texture.dtype}")
        return cls(np.asarray(origin, np.float64), np.asarray(edge_u, np.float64),
                   np.asarray(edge_v, np.float64), mipmaps(texture), scannable)

    @property
    def texture(self) -> np.ndarray:
        return self.levels[0]

    def corners(self) -> np.ndarray:
        """(4, 3) world corners in the order (s, t) = (0,0), (1,0), (1,1), (0,1)."""
        o, u, v = self.origin, self.edge_u, self.edge_v
        return np.stack([o, o + u, o + u + v, o + v])

    def point(self, s: np.ndarray, t: np.ndarray) -> np.ndarray:
        """World points (N, 3) at texture coordinates s, t in [0, 1]."""
        return self.origin + np.outer(s, self.edge_u) + np.outer(t, self.edge_v)


@dataclass(frozen=True, eq=False)
class Scene:
    quads: tuple[Quad, ...]
    background_rgb: tuple[int, int, int] = (172, 186, 201)


@dataclass(frozen=True, eq=False)
class Rendering:
    """Per-pixel output of `render` for an (H, W) image.

    image: (H, W, 3) uint8 RGB. depth: (H, W) float32 camera z, NaN where no surface.
    xyz: (H, W, 3) float32 world point seen at the pixel centre, NaN where no surface.
    quad_index: (H, W) int16 index into Scene.quads, -1 where no surface.
    """

    image: np.ndarray
    depth: np.ndarray
    xyz: np.ndarray
    quad_index: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        return self.quad_index >= 0


def quad_bbox(quad: Quad, camera: PinholeCamera, cam_from_world: np.ndarray, near: float
              ) -> tuple[int, int, int, int] | None:
    """Pixel box (x0, y0, x1, y1) holding the quad's image, the whole image if it crosses the
    near plane, None if it is entirely behind the camera or outside the image."""
    uv, depth = project(quad.corners(), camera, cam_from_world)
    if (depth < near).all():
        return None
    if (depth < near).any():
        return 0, 0, camera.width, camera.height
    x0, y0 = np.floor(uv.min(0)).astype(int) - 1
    x1, y1 = np.ceil(uv.max(0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, camera.width), min(y1, camera.height)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def image_from_texture(quad: Quad, camera: PinholeCamera, cam_from_world: np.ndarray) -> np.ndarray | None:
    """Homography (3, 3) from (s, t, 1) to homogeneous COLMAP pixels; None if seen edge-on."""
    rotation, translation = cam_from_world[:, :3], cam_from_world[:, 3]
    plane = np.stack([rotation @ quad.edge_u, rotation @ quad.edge_v,
                      rotation @ quad.origin + translation], axis=1)
    scale = np.prod(np.linalg.norm(plane, axis=0))
    if abs(np.linalg.det(plane)) < 1e-9 * scale:
        return None
    return camera.K @ plane


def sample_mipmapped(quad: Quad, s: np.ndarray, t: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Trilinear texture lookup at (s, t) with `footprint` texels per pixel; (N, 3) float32."""
    last = len(quad.levels) - 1
    level = np.clip(np.log2(np.maximum(footprint, 1e-6)), 0, last)
    low = np.floor(level).astype(np.int32)
    frac = (level - low).astype(np.float32)
    colour = np.zeros((len(s), 3), np.float32)
    base_height, base_width = quad.levels[0].shape[:2]
    x, y = s * base_width - 0.5, t * base_height - 0.5  # level-0 texel coordinates (cv2: centres on integers)
    for lvl in range(int(low.min()), min(int(low.max()) + 1, last) + 1):
        weight = np.where(low == lvl, 1 - frac, 0) + np.where(low + 1 == lvl, frac, 0)
        used = weight > 0
        if not used.any():
            continue
        # pyrDown centres texel i of a level on texel 2i of the level below, so level-0 texel x is
        # level-L texel x / 2^L (not (x + 0.5) / 2^L - 0.5: that shifted distant surfaces by up to 0.5 px)
        texel = remap_points(quad.levels[lvl], x[used] / 2 ** lvl, y[used] / 2 ** lvl)
        colour[used] += weight[used, None] * texel
    return colour


def remap_points(texture: np.ndarray, x: np.ndarray, y: np.ndarray, row: int = 1024) -> np.ndarray:
    """Bilinear lookup of N points (cv2 pixel convention) as (N, 3) float32; cv2.remap needs
    both map sides below 32767, so the points are laid out in rows of `row`."""
    n = len(x)
    padded = -(-n // row) * row
    maps = np.zeros((2, padded), np.float32)
    maps[0, :n], maps[1, :n] = x, y
    texel = cv2.remap(texture, maps[0].reshape(-1, row), maps[1].reshape(-1, row), cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_REFLECT_101)
    return texel.reshape(padded, -1)[:n].astype(np.float32)


def render(scene: Scene, camera: PinholeCamera, cam_from_world: np.ndarray, near: float = 0.05) -> Rendering:
    """Render `scene` from `cam_from_world` (3, 4) with `camera`; surfaces closer than `near` are cut."""
    h, w = camera.height, camera.width
    zbuffer = np.full((h, w), np.inf, np.float32)
    quad_index = np.full((h, w), -1, np.int16)
    colour = np.empty((h, w, 3), np.float32)
    colour[:] = scene.background_rgb
    for k, quad in enumerate(scene.quads):
        box = quad_bbox(quad, camera, cam_from_world, near)
        homography = None if box is None else image_from_texture(quad, camera, cam_from_world)
        if homography is not None:
            draw_quad(k, quad, np.linalg.inv(homography), box, zbuffer, quad_index, colour, near)
    depth = np.where(quad_index >= 0, zbuffer, np.nan).astype(np.float32)
    return Rendering(np.clip(np.rint(colour), 0, 255).astype(np.uint8), depth,
                     world_points(depth, camera, cam_from_world), quad_index)


def draw_quad(k: int, quad: Quad, texture_from_image: np.ndarray, box: tuple[int, int, int, int],
              zbuffer: np.ndarray, quad_index: np.ndarray, colour: np.ndarray, near: float) -> None:
    """z-buffered draw of quad `k` inside `box`, updating the three buffers in place."""
    x0, y0, x1, y1 = box
    g = texture_from_image.astype(np.float32)
    u = np.arange(x0, x1, dtype=np.float32)[None] + 0.5
    v = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
    g0, g1, g2 = (g[i, 0] * u + g[i, 1] * v + g[i, 2] for i in range(3))
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = 1.0 / g2                     # z of the plane point seen by the pixel
        s, t = g0 * depth, g1 * depth
        inside = (g2 > 0) & (depth >= near) & (s >= 0) & (s <= 1) & (t >= 0) & (t <= 1)
    update = inside & (depth < zbuffer[y0:y1, x0:x1])
    if not update.any():
        return
    rows, cols = np.nonzero(update)
    s, t, g2 = s[rows, cols], t[rows, cols], g2[rows, cols]
    du = (g[0, 0] - s * g[2, 0]) / g2, (g[1, 0] - t * g[2, 0]) / g2   # d(s, t)/du
    dv = (g[0, 1] - s * g[2, 1]) / g2, (g[1, 1] - t * g[2, 1]) / g2   # d(s, t)/dv
    th, tw = quad.texture.shape[:2]
    footprint = np.maximum(np.hypot(tw * du[0], th * du[1]), np.hypot(tw * dv[0], th * dv[1]))
    rows, cols = rows + y0, cols + x0
    zbuffer[rows, cols] = depth[update]
    quad_index[rows, cols] = k
    colour[rows, cols] = sample_mipmapped(quad, s, t, footprint)


def world_points(depth: np.ndarray, camera: PinholeCamera, cam_from_world: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 world points at the pixel centres for a depth map (NaN stays NaN)."""
    h, w = depth.shape
    u = (np.arange(w) + 0.5 - camera.cx) / camera.fx
    v = (np.arange(h) + 0.5 - camera.cy) / camera.fy
    rays = np.stack(np.broadcast_arrays(u[None], v[:, None], np.ones((1, 1))), axis=-1)
    points_cam = rays * depth[..., None].astype(np.float64)
    rotation, translation = cam_from_world[:, :3], cam_from_world[:, 3]
    return ((points_cam - translation) @ rotation).astype(np.float32)


def apply_night(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A "night" version of an RGB uint8 image: darker, gamma, sodium-lamp colour cast, uneven
    lighting (smooth random field), shot and read noise. Deterministic for a given rng."""
    h, w = image.shape[:2]
    linear = (image.astype(np.float32) / 255.0) ** rng.uniform(1.3, 1.6)
    lamps = rng.uniform(0.45, 1.35, size=(3, 4)).astype(np.float32)
    lighting = cv2.resize(lamps, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]
    tint = np.array([1.0, rng.uniform(0.72, 0.85), rng.uniform(0.45, 0.6)], np.float32)
    out = linear * lighting * tint * rng.uniform(0.7, 0.9)
    noise_std = np.sqrt(np.maximum(out, 0) * 0.002 + 0.012 ** 2)
    out = out + rng.standard_normal(out.shape, dtype=np.float32) * noise_std
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
