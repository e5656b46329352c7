"""Hand-built scenes for the localization steps: exact projections, no features needed."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2  # noqa: F401  (pycolmap 4.2.1 must be imported after cv2)
import h5py
import numpy as np
import pycolmap
import pytest

from d2_sfm.h5io import write_features, write_matches

WIDTH, HEIGHT, FOCAL = 640, 480, 500.0


def look_at(center, target) -> pycolmap.Rigid3d:
    """cam_from_world of a camera at `center` looking at `target`, image y along world -z."""
    z = np.asarray(target, float) - center
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    rotation = np.stack([x, y, z])
    return pycolmap.Rigid3d(pycolmap.Rotation3d(rotation), -rotation @ np.asarray(center, float))


def camera(camera_id: int = 1) -> pycolmap.Camera:
    return pycolmap.Camera(model="PINHOLE", width=WIDTH, height=HEIGHT,
                           params=[FOCAL, FOCAL, WIDTH / 2, HEIGHT / 2], camera_id=camera_id)


def project(pose: pycolmap.Rigid3d, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COLMAP pixel coordinates (N, 2) and a mask of the points inside the image."""
    in_camera = points @ pose.matrix()[:, :3].T + pose.translation
    uv = camera().img_from_cam(in_camera)
    inside = (in_camera[:, 2] > 0) & (uv[:, 0] > 1) & (uv[:, 0] < WIDTH - 1) & (uv[:, 1] > 1) & (uv[:, 1] < HEIGHT - 1)
    return uv, inside


@dataclass
class ModelScene:
    """Two database images with a model of their points, and a query; files in `folder`."""

    folder: Path
    reconstruction: pycolmap.Reconstruction
    query_pose: pycolmap.Rigid3d
    features: Path
    matches: Path
    db_names: list[str]
    query: str = "query/q.jpg"


def write_scene_files(folder: Path, keypoints: dict[str, np.ndarray],
                      matches: dict[tuple[str, str], np.ndarray]) -> tuple[Path, Path]:
    """Features (keypoints given in COLMAP pixels, stored -0.5) and matches (index pairs) files."""
    features, matches_path = folder / "features.h5", folder / "matches.h5"
    with h5py.File(features, "w") as f:
        for name, kp in keypoints.items():
            write_features(f, name, kp - 0.5, np.zeros((len(kp), 8), np.float32), np.ones(len(kp)), (WIDTH, HEIGHT))
    with h5py.File(matches_path, "w") as f:
        for (name0, name1), pairs in matches.items():
            matches0 = np.full(len(keypoints[name0]), -1)
            matches0[pairs[:, 0]] = pairs[:, 1]
            write_matches(f, name0, name1, matches0, np.ones(len(matches0)))
    return features, matches_path


@pytest.fixture
def model_scene(tmp_path) -> ModelScene:
    """Points on a wall 6 m away, two posed database images, a query between them (exact data)."""
    rng = np.random.default_rng(0)
    points = np.c_[rng.uniform(-3, 3, 400), np.full(400, 6.0) + rng.uniform(-1, 1, 400), rng.uniform(-2, 2, 400)]
    poses = {"db/a.jpg": look_at([-0.6, 0, 0.1], [0, 6, 0]), "db/b.jpg": look_at([0.6, 0, -0.1], [0.2, 6, 0])}
    query_pose = look_at([0.1, 0.4, 0.2], [-0.1, 6, 0.1])
    reconstruction = pycolmap.Reconstruction()
    reconstruction.add_camera_with_trivial_rig(camera())
    keypoints, index_of = {}, {}
    for image_id, (name, pose) in enumerate(poses.items(), start=1):
        uv, inside = project(pose, points)
        ids = np.flatnonzero(inside)
        keypoints[name] = uv[ids]
        index_of[name] = {int(p): k for k, p in enumerate(ids)}
        image = pycolmap.Image(name=name, camera_id=1, image_id=image_id, keypoints=uv[ids])
        reconstruction.add_image_with_trivial_frame(image, pose)
    for p in sorted(set(index_of["db/a.jpg"]) & set(index_of["db/b.jpg"])):
        track = pycolmap.Track()
        for image_id, name in enumerate(poses, start=1):
            track.add_element(image_id, index_of[name][p])
        reconstruction.add_point3D(points[p], track)
    uv, inside = project(query_pose, points)
    query_ids = np.flatnonzero(inside)
    keypoints["query/q.jpg"] = uv[query_ids]
    matches = {}
    for name in poses:
        pairs = [(k, index_of[name][p]) for k, p in enumerate(query_ids) if p in index_of[name]]
        matches[("query/q.jpg", name)] = np.array(pairs)
    features, matches_path = write_scene_files(tmp_path, keypoints, matches)
    return ModelScene(tmp_path, reconstruction, query_pose, features, matches_path, list(poses))
