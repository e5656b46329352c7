"""Synthetic piecewise-planar sites, textured with photograph collages.

World frame of every site: metres, z up. Three sites:
- `street_site`: an Aachen-like street canyon (facades with setbacks, ground, end walls, kiosks).
- `room_site`: an InLoc-like office floor (wall panels, one unscannable window, floor, ceiling,
  furniture and a pillar).
- `plaza_site`: a U-shaped courtyard with boxes, for the default SfM sample scene.
Each builder is deterministic for a given numpy Generator.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .render import Quad, Scene
from .textures import collage

TEXELS_PER_METRE = 128
GROUND_TEXELS_PER_METRE = 96  # ground and ceilings are mostly seen at grazing angles
MAX_TEXTURE_SIDE = 1024
LIGHT_DIRECTION = np.array([0.45, -0.3, 0.84]) / np.linalg.norm([0.45, -0.3, 0.84])


def textured_quad(origin, edge_u, edge_v, rng: np.random.Generator, scannable: bool = True,
                  density: float = TEXELS_PER_METRE) -> Quad:
    """A quad with its own collage texture (`density` texels per metre, at most MAX_TEXTURE_SIDE),
    shaded by a fixed distant light so that differently oriented faces differ in brightness."""
    edge_u, edge_v = np.asarray(edge_u, float), np.asarray(edge_v, float)
    size = [int(np.clip(np.linalg.norm(e) * density, 16, MAX_TEXTURE_SIDE)) for e in (edge_u, edge_v)]
    texture = collage((size[0], size[1]), rng)
    normal = np.cross(edge_u, edge_v)
    shade = 0.7 + 0.3 * abs(float(normal @ LIGHT_DIRECTION)) / np.linalg.norm(normal)
    texture = cv2.convertScaleAbs(texture, alpha=shade)
    return Quad.create(origin, edge_u, edge_v, texture, scannable)


@dataclass(frozen=True)
class Box:
    """An upright box: footprint centre (x, y), size (sx, sy, sz), yaw about z, standing on z0."""

    center_xy: tuple[float, float]
    size: tuple[float, float, float]
    yaw_deg: float
    z0: float

    def footprint(self) -> np.ndarray:
        """(4, 2) corners of the footprint, counter-clockwise."""
        c, s = np.cos(np.deg2rad(self.yaw_deg)), np.sin(np.deg2rad(self.yaw_deg))
        half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * np.array(self.size[:2]) / 2
        return half @ np.array([[c, s], [-s, c]]) + np.array(self.center_xy)

    def contains_xy(self, xy: np.ndarray, margin: float) -> bool:
        lo, hi = self.footprint().min(0) - margin, self.footprint().max(0) + margin
        return bool(np.all(xy >= lo) and np.all(xy <= hi))

    def quads(self, rng: np.random.Generator) -> list[Quad]:
        """Four sides and the top (the bottom is never seen)."""
        corners = self.footprint()
        up = np.array([0.0, 0.0, self.size[2]])
        base = np.hstack([corners, np.full((4, 1), self.z0)])
        sides = [textured_quad(base[i], base[(i + 1) % 4] - base[i], up, rng) for i in range(4)]
        top = textured_quad(base[0] + up, base[1] - base[0], base[3] - base[0], rng)
        return sides + [top]


@dataclass(frozen=True, eq=False)
class Site:
    """A scene plus where cameras may stand: inside `walkable` (x0, y0, x1, y1), outside boxes."""

    scene: Scene
    walkable: tuple[float, float, float, float]
    boxes: tuple[Box, ...]
    floor_z: float = 0.0

    def is_free(self, xy: np.ndarray, margin: float = 0.6) -> bool:
        x0, y0, x1, y1 = self.walkable
        inside = x0 <= xy[0] <= x1 and y0 <= xy[1] <= y1
        return inside and not any(box.contains_xy(xy, margin) for box in self.boxes)

    def sample_free_xy(self, rng: np.random.Generator, margin: float = 0.6, max_tries: int = 1000) -> np.ndarray:
        x0, y0, x1, y1 = self.walkable
        for _ in range(max_tries):
            xy = rng.uniform([x0, y0], [x1, y1])
            if self.is_free(xy, margin):
                return xy
        raise RuntimeError(f"no free camera position found in {self.walkable} after {max_tries} tries")


def tiled_plane(origin: np.ndarray, edge_u: np.ndarray, edge_v: np.ndarray, tile: float,
                rng: np.random.Generator, density: float = TEXELS_PER_METRE) -> list[Quad]:
    """The parallelogram origin + [0,1] edge_u + [0,1] edge_v as a grid of ~tile-metre quads."""
    nu = max(1, int(np.ceil(np.linalg.norm(edge_u) / tile)))
    nv = max(1, int(np.ceil(np.linalg.norm(edge_v) / tile)))
    du, dv = np.asarray(edge_u) / nu, np.asarray(edge_v) / nv
    return [textured_quad(origin + i * du + j * dv, du, dv, rng, density=density)
            for i in range(nu) for j in range(nv)]


def facade_row(x: float, y_start: float, y_end: float, side: float, rng: np.random.Generator) -> list[Quad]:
    """Building fronts along y at x (set back by up to 1 m away from the street on `side` = +-1),
    with the short returns that close the steps between neighbouring fronts."""
    quads: list[Quad] = []
    y, previous = y_start, None
    while y < y_end - 1e-6:
        length = min(rng.uniform(5.0, 9.0), y_end - y)
        xf, height = x + side * rng.uniform(0.0, 1.0), rng.uniform(8.0, 13.0)
        quads.append(textured_quad([xf, y, 0], [0, length, 0], [0, 0, height], rng))
        if previous is not None:
            px, ph = previous
            quads.append(textured_quad([px, y, 0], [xf - px, 0, 0], [0, 0, min(ph, height)], rng))
        previous, y = (xf, height), y + length
    return quads


def street_site(rng: np.random.Generator) -> Site:
    """Street canyon along +y: facades at x = +-6 (y in [-6, 46]), ground, end walls, kiosks."""
    quads = facade_row(-6.0, -6.0, 46.0, -1.0, rng) + facade_row(6.0, -6.0, 46.0, 1.0, rng)
    quads += tiled_plane(np.array([-7.0, -6.0, 0.0]), np.array([14.0, 0, 0]), np.array([0, 52.0, 0]), 7.0, rng,
                         density=GROUND_TEXELS_PER_METRE)
    quads += [textured_quad([-7.0, y, 0], [14.0, 0, 0], [0, 0, 12.0], rng) for y in (-6.0, 46.0)]
    boxes = []
    for y in np.linspace(4.0, 36.0, 4) + rng.uniform(-2, 2, 4):
        side = rng.choice([-1.0, 1.0])
        size = (rng.uniform(1.0, 2.0), rng.uniform(1.0, 2.5), rng.uniform(1.2, 2.6))
        boxes.append(Box((side * rng.uniform(3.6, 4.4), float(y)), size, rng.uniform(-20, 20), 0.0))
    for box in boxes:
        quads += box.quads(rng)
    return Site(Scene(tuple(quads)), walkable=(-2.8, 0.0, 2.8, 40.0), boxes=tuple(boxes))


def room_site(rng: np.random.Generator, z0: float = 0.0, size_xy: tuple[float, float] = (14.0, 9.0),
              height: float = 3.0) -> Site:
    """Office floor [0, sx] x [0, sy] x [z0, z0 + height]: panelled walls (one panel is an
    unscannable window), floor, ceiling, three pieces of furniture and a pillar."""
    sx, sy = size_xy
    corners = np.array([[0, 0, z0], [sx, 0, z0], [sx, sy, z0], [0, sy, z0]], float)
    up = np.array([0.0, 0.0, height])
    quads: list[Quad] = []
    window_wall, window_panel = rng.integers(4), 1
    for i in range(4):
        edge = corners[(i + 1) % 4] - corners[i]
        panels = max(2, int(round(np.linalg.norm(edge) / 3.5)))
        for j in range(panels):
            scannable = not (i == window_wall and j == window_panel)
            quads.append(textured_quad(corners[i] + edge * j / panels, edge / panels, up, rng, scannable))
    for base in (corners[0], corners[0] + up):  # floor and ceiling
        quads += tiled_plane(base, corners[1] - corners[0], corners[3] - corners[0], 4.5, rng,
                             density=GROUND_TEXELS_PER_METRE)
    boxes = [Box((sx * 0.5 + rng.uniform(-1, 1), sy * 0.5 + rng.uniform(-0.5, 0.5)), (0.7, 0.7, height),
                 rng.uniform(0, 90), z0)]
    for cx, cy in ((0.2, 0.25), (0.75, 0.75), (0.8, 0.2)):
        size = (rng.uniform(0.8, 2.0), rng.uniform(0.6, 1.2), rng.uniform(0.7, 1.8))
        boxes.append(Box((sx * cx, sy * cy), size, rng.uniform(-30, 30), z0))
    for box in boxes:
        quads += box.quads(rng)
    return Site(Scene(tuple(quads)), walkable=(1.2, 1.2, sx - 1.2, sy - 1.2), boxes=tuple(boxes), floor_z=z0)


def plaza_site(rng: np.random.Generator) -> Site:
    """Courtyard: ground [-12, 12]^2, walls at x = +-9 and y = 9 (6 m high), five boxes near (0, 1)."""
    quads = tiled_plane(np.array([-12.0, -12.0, 0.0]), np.array([24.0, 0, 0]), np.array([0, 24.0, 0]), 6.0, rng,
                        density=GROUND_TEXELS_PER_METRE)
    for start, edge in (([-9.0, -6.0, 0], [0, 15.0, 0]), ([-9.0, 9.0, 0], [18.0, 0, 0]),
                        ([9.0, 9.0, 0], [0, -15.0, 0])):
        quads += tiled_plane(np.array(start), np.array(edge), np.array([0, 0, 6.0]), 6.0, rng)
    boxes = []
    for cx, cy in ((-2.5, 2.5), (0.5, 4.0), (2.8, 1.5), (-0.8, -0.5), (1.5, -1.8)):
        size = (rng.uniform(0.9, 1.8), rng.uniform(0.9, 1.8), rng.uniform(0.8, 2.4))
        boxes.append(Box((cx + rng.uniform(-0.3, 0.3), cy + rng.uniform(-0.3, 0.3)), size, rng.uniform(0, 90), 0.0))
    for box in boxes:
        quads += box.quads(rng)
    return Site(Scene(tuple(quads)), walkable=(-8.0, -11.0, 8.0, 8.0), boxes=tuple(boxes))
