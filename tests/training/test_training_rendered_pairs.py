"""Rendered 3D training pairs: depth + pose correspondences agree with an independent ray caster,
and points hidden in view 2 are excluded (D2-Net's MegaDepth occlusion rule)."""
import numpy as np
import pytest
import torch

from d2_sfm.datasets.render import PinholeCamera, Quad, Scene, look_at, project, render
from d2_sfm.training import photos
from d2_sfm.training.pairs import cell_grid_pixels
from d2_sfm.training.rendered_pairs import (RenderConfig, RenderedPairs, appearance_change,
                                            depth_correspondences)

SIZE = 128


def noise_texture(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)


def quads() -> list[Quad]:
    wall = Quad.create([-6, 10, 0], [12, 0, 0], [0, 0, 6], noise_texture(0))  # plane y = 10
    occluder = Quad.create([-1, 6, 1], [2, 0, 0], [0, 0, 2], noise_texture(1))  # plane y = 6, in front
    return [wall, occluder]


def ray_hit(quad: Quad, centre: np.ndarray, direction: np.ndarray) -> float:
    """Distance along the ray to the quad (inf when missed): solves centre + a d = o + s u + t v."""
    matrix = np.stack([direction, -quad.edge_u, -quad.edge_v], axis=1)
    if abs(np.linalg.det(matrix)) < 1e-12:
        return np.inf
    a, s, t = np.linalg.solve(matrix, quad.origin - centre)
    return a if a > 1e-6 and 0 <= s <= 1 and 0 <= t <= 1 else np.inf


def first_hit(centre: np.ndarray, direction: np.ndarray) -> tuple[float, int]:
    distances = [ray_hit(q, centre, direction) for q in quads()]
    return min(distances), int(np.argmin(distances))


@pytest.fixture(scope="module")
def rendered_pair():
    scene = Scene(tuple(quads()))
    camera = PinholeCamera.from_hfov(SIZE, SIZE, 60.0)
    pose1 = look_at(np.array([-2.5, 0.0, 2.0]), np.array([0.0, 10.0, 2.0]))
    pose2 = look_at(np.array([2.5, 0.0, 2.0]), np.array([0.0, 10.0, 2.0]))
    first, second = render(scene, camera, pose1), render(scene, camera, pose2)
    matches = depth_correspondences(first.depth, camera, pose1, second.depth, camera, pose2, tolerance=0.05)
    return camera, pose1, pose2, matches


def test_correspondences_match_projected_3d_points_and_exclude_occluded_ones(rendered_pair):
    camera, pose1, pose2, matches = rendered_pair
    cells, pixels_ij = cell_grid_pixels(SIZE, SIZE)
    centre1, centre2 = (-p[:, :3].T @ p[:, 3] for p in (pose1, pose2))
    kept = {tuple(c) for c in matches.cells1.tolist()}
    expected_at = {tuple(c): p for c, p in zip(matches.cells1.tolist(), matches.pixels2.numpy())}
    visible, occluded = [], []
    for cell, (i, j) in zip(cells, pixels_ij):
        ray = pose1[:, :3].T @ np.linalg.solve(camera.K, [j + 0.5, i + 0.5, 1.0])  # COLMAP pixel centre
        distance, _ = first_hit(centre1, ray)
        if not np.isfinite(distance):
            continue
        point = centre1 + distance * ray
        uv, depth = project(point[None], camera, pose2)
        pos2_ij = np.array([uv[0, 1] - 0.5, uv[0, 0] - 0.5])  # back to integer = pixel centre
        if depth[0] <= 0 or not (0 <= pos2_ij).all() or not (pos2_ij <= SIZE - 1).all():
            assert tuple(cell) not in kept  # outside view 2
            continue
        to_point = point - centre2
        seen_distance, _ = first_hit(centre2, to_point / np.linalg.norm(to_point))
        if seen_distance < np.linalg.norm(to_point) - 0.05:
            occluded.append(tuple(cell))
            continue
        visible.append(tuple(cell))
        if tuple(cell) in kept:  # pixel agreement with the independent projection
            assert np.abs(expected_at[tuple(cell)] - pos2_ij).max() < 0.05
    assert len(occluded) >= 10, "the scene must hide some wall points from view 2"
    assert not kept & set(occluded)
    assert len(kept & set(visible)) >= 0.9 * len(visible)
    assert kept <= set(visible)


def test_dataset_pairs_are_deterministic_with_enough_correspondences():
    pytest.importorskip("skimage")
    dataset = RenderedPairs(photos.pool("train"), 10, seed=3, config=RenderConfig(crop_size=SIZE))
    a, b = dataset.item(0, 2), dataset.item(0, 2)
    assert torch.equal(a.image1, b.image1) and torch.equal(a.image2, b.image2)
    assert torch.equal(a.correspondences.cells1, b.correspondences.cells1)
    assert a.image1.shape == (3, SIZE, SIZE) and a.image1.dtype == torch.float32
    assert len(a.correspondences) >= 64
    assert not torch.equal(dataset.item(0, 3).image1, a.image1)


def test_appearance_change_keeps_shape_and_changes_the_image():
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for seed in range(6):
        out = appearance_change(image, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.uint8
        assert np.abs(out.astype(int) - image).mean() > 1


def test_training_and_validation_photos_are_disjoint_and_licensed():
    pytest.importorskip("skimage")
    train = {p.name for p in photos.selected("train")}
    validation = {p.name for p in photos.selected("validation")}
    assert validation == set(photos.VALIDATION_PHOTOS)
    assert train and not train & validation
    assert all(p.licence for p in photos.PHOTOS)
    with pytest.raises(ValueError):
        photos.selected("test")
