"""A synthetic COLMAP scene for the database, mapping and triangulation tests: random 3D points seen
by cameras on an arc; projections as keypoints (d2_sfm convention) and matches from point ids."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pycolmap

from d2_sfm.h5io import atomic_h5, write_features, write_matches

WIDTH, HEIGHT, FOCAL = 640, 480, 500.0


def look_at(centre: np.ndarray, target: np.ndarray) -> pycolmap.Rigid3d:
    z = (target - centre) / np.linalg.norm(target - centre)
    x = np.cross([0.0, -1.0, 0.0], z)
    x /= np.linalg.norm(x)
    rotation = np.stack([x, np.cross(z, x), z])
    return pycolmap.Rigid3d(pycolmap.Rotation3d(rotation), -rotation @ centre)


@dataclass
class SyntheticInputs:
    image_dir: Path
    features: Path
    matches: Path
    pairs: Path
    names: list[str]
    cam_from_world: dict[str, pycolmap.Rigid3d]
    keypoints: dict[str, np.ndarray]  # d2_sfm convention (top-left pixel centre at 0)


def synthetic_inputs(root: Path, num_views: int = 5, noise_view: bool = True, seed: int = 0,
                     folders: bool = False) -> SyntheticInputs:
    """Views of random 3D points on an arc (projections as keypoints, matches from point ids), plus
    an optional `noise.jpg` whose matches to the first view are random (a false pair)."""
    rng = np.random.default_rng(seed)
    points = rng.uniform([-2, -1.5, -1], [2, 1.5, 1], size=(1500, 3))
    camera = pycolmap.Camera(model="PINHOLE", width=WIDTH, height=HEIGHT,
                             params=[FOCAL, FOCAL, WIDTH / 2, HEIGHT / 2])
    image_dir = root / "images"
    names, poses, keypoints, index_of = [], {}, {}, {}
    for i in range(num_views):
        name = f"{'ab'[i % 2]}/view{i}.jpg" if folders else f"view{i}.jpg"
        angle = np.deg2rad(-30 + 60 * i / max(num_views - 1, 1))
        pose = look_at(np.array([6 * np.sin(angle), 0.2 * np.cos(3 * angle), -6 * np.cos(angle)]), np.zeros(3))
        camera_points = points @ pose.rotation.matrix().T + pose.translation
        uv = camera.img_from_cam(camera_points)
        visible = np.flatnonzero((camera_points[:, 2] > 0) & (uv[:, 0] > 1) & (uv[:, 0] < WIDTH - 1)
                                 & (uv[:, 1] > 1) & (uv[:, 1] < HEIGHT - 1))
        keypoints[name] = (uv[visible] - 0.5 + rng.normal(0, 0.3, (len(visible), 2))).astype(np.float32)
        index_of[name] = {int(p): k for k, p in enumerate(visible)}
        names.append(name)
        poses[name] = pose
    if noise_view:
        names.append("noise.jpg")
        keypoints["noise.jpg"] = rng.uniform([0, 0], [WIDTH - 1, HEIGHT - 1], (600, 2)).astype(np.float32)
    for name in names:
        (image_dir / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image_dir / name), np.full((HEIGHT, WIDTH, 3), 128, np.uint8))
    features, matches, pairs = root / "features.h5", root / "matches.h5", root / "pairs.txt"
    with atomic_h5(features) as handle:
        for name in names:
            count = len(keypoints[name])
            write_features(handle, name, keypoints[name], rng.normal(size=(count, 8)), np.ones(count), (WIDTH, HEIGHT))
    pair_list = [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]
    with atomic_h5(matches) as handle:
        for name0, name1 in pair_list:
            matches0 = np.full(len(keypoints[name0]), -1)
            if "noise.jpg" in (name0, name1):
                if name0 == names[0]:
                    chosen = rng.choice(len(matches0), 150, replace=False)
                    matches0[chosen] = rng.choice(len(keypoints[name1]), 150, replace=False)
            else:
                for point, k in index_of[name0].items():
                    matches0[k] = index_of[name1].get(point, -1)
            write_matches(handle, name0, name1, matches0, (matches0 >= 0).astype(float))
    pairs.write_text("".join(f"{a} {b}\n" for a, b in pair_list))
    return SyntheticInputs(image_dir, features, matches, pairs, names, poses, keypoints)
