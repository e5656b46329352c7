"""Photometric keypoint adjustment (affine Lucas-Kanade on image patches): images warped by known
homographies with OpenCV, keypoints perturbed by known sub-pixel offsets, refined back; the local
affine shapes are robust to outlier matches; refined keypoints stay inside the image."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from test_refine import SIZE, grid_points, texture

from d2_sfm import refine
from d2_sfm.h5io import atomic_h5, read_keypoints, write_features, write_matches
from d2_sfm.images import read_image
from d2_sfm.refinement import PatchConfig, align_matched_keypoints, local_linear_maps, prepare_image
from d2_sfm.refinement.local_affine import AffineConfig
from d2_sfm.refinement.patches import align, templates

# image a -> b, a -> c: rotation, scale, shear and a little perspective
HOMOGRAPHIES = {"a.png": np.eye(3),
                "b.png": np.array([[0.93, 0.14, 4.0], [-0.10, 1.04, 2.5], [2e-4, -1e-4, 1.0]]),
                "c.png": np.array([[1.08, -0.12, -6.0], [0.09, 0.95, 5.0], [-1e-4, 2e-4, 1.0]])}


def project(homography: np.ndarray, points: np.ndarray) -> np.ndarray:
    return cv2.perspectiveTransform(points[None].astype(np.float64), homography)[0].astype(np.float32)


def warped(image: np.ndarray, homography: np.ndarray) -> np.ndarray:
    size = (image.shape[1], image.shape[0])
    return cv2.warpPerspective(image, homography, size, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def test_local_affine_shapes_ignore_outlier_matches():
    rng = np.random.default_rng(0)
    source = rng.uniform(0, 400, (300, 2)).astype(np.float32)
    linear = np.array([[0.8, 0.3], [-0.2, 1.1]], np.float32)
    target = source @ linear.T + np.float32([30, -12])
    outliers = rng.random(len(source)) < 0.3
    target[outliers] = rng.uniform(0, 400, (outliers.sum(), 2))
    found, fitted = local_linear_maps(torch.from_numpy(source), torch.from_numpy(target),
                                      torch.from_numpy(source), AffineConfig())
    assert fitted.float().mean() > 0.95
    error = (found[fitted] - torch.from_numpy(linear)).abs().amax((1, 2))
    assert torch.quantile(error, 0.95) < 1e-3, error.max()


def test_matched_keypoints_align_across_a_homography_warp_of_a_real_image(shared_data: Path):
    image = read_image(shared_data / "sfm" / "kermit" / "kermit000.jpg")
    homography = np.array([[0.9, 0.12, 30.0], [-0.08, 1.05, 10.0], [1e-4, 5e-5, 1.0]])
    other = warped(image, homography)
    corners = cv2.goodFeaturesToTrack(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), 300, 0.01, 8)[:, 0]
    truth = project(homography, corners)
    height, width = image.shape[:2]
    inside = np.all((truth > 12) & (truth < [width - 12, height - 12]), axis=1)
    corners, truth = corners[inside], truth[inside]
    start = truth + np.random.default_rng(1).uniform(-1.5, 1.5, truth.shape).astype(np.float32)
    for max_edge in (None, 512):  # original pixels in and out, also when the alignment works resized
        refined = align_matched_keypoints(image, other, corners, start, max_edge=max_edge)
        before, after = (np.linalg.norm(p - truth, axis=1) for p in (start, refined))
        assert np.median(before) > 0.8
        assert np.median(after) < 0.12, (max_edge, np.median(after))
        assert np.mean(after < 0.3) > 0.9


def write_warped_scene(root: Path, perturb: float, seed: int = 2) -> dict[str, np.ndarray]:
    """Images a, b, c (homography warps of one texture), features (truth + noise except in a),
    exhaustive matches of equal indices, pairs; returns the true keypoints."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    base, points = texture(), grid_points()
    rng = np.random.default_rng(seed)
    truth = {}
    with atomic_h5(root / "features.h5") as f:
        for index, (name, homography) in enumerate(HOMOGRAPHIES.items()):
            cv2.imwrite(str(root / "images" / name), warped(base, homography)[:, :, ::-1])
            truth[name] = project(homography, points)
            noisy = truth[name] + (rng.uniform(-perturb, perturb, points.shape) if index else 0)
            write_features(f, name, noisy, rng.normal(size=(len(points), 8)), np.ones(len(points)), SIZE)
    names = list(HOMOGRAPHIES)
    with atomic_h5(root / "matches.h5") as f:
        for i in range(3):
            for j in range(i + 1, 3):  # a's matches score highest: a is every track's root
                write_matches(f, names[i], names[j], np.arange(len(points)), np.full(len(points), 0.9 - 0.1 * (i + j)))
    (root / "pairs.txt").write_text("a.png b.png\na.png c.png\nb.png c.png\n")
    return truth


def test_refine_step_aligns_tracks_across_homography_warps(tmp_path):
    truth = write_warped_scene(tmp_path, perturb=1.5)
    summary = refine.main(tmp_path / "images", tmp_path / "features.h5", tmp_path / "matches.h5",
                          tmp_path / "pairs.txt", tmp_path / "refined.h5", refine.RefineConfig(mode="keypoints"))
    assert summary.keypoints_moved == 2 * len(grid_points())
    for name in ("b.png", "c.png"):
        before = np.linalg.norm(read_keypoints(tmp_path / "features.h5", name) - truth[name], axis=1)
        after = np.linalg.norm(read_keypoints(tmp_path / "refined.h5", name) - truth[name], axis=1)
        assert np.median(before) > 0.8
        assert np.median(after) < 0.1, (name, np.median(after))
        assert np.mean(after < 0.3) > 0.9
    assert np.array_equal(read_keypoints(tmp_path / "refined.h5", "a.png"), truth["a.png"])  # roots stay


def test_refined_keypoints_do_not_depend_on_the_number_of_threads(tmp_path):
    """Images are aligned on parallel worker threads, one image per thread, each op on one thread:
    the same keypoints with 1 or 3 workers, and torch's thread count is restored afterwards."""
    write_warped_scene(tmp_path, perturb=1.5)
    threads = torch.get_num_threads()
    refined = {}
    try:
        for workers in (1, 3):
            torch.set_num_threads(workers)
            output = tmp_path / f"refined{workers}.h5"
            refine.main(tmp_path / "images", tmp_path / "features.h5", tmp_path / "matches.h5", tmp_path / "pairs.txt",
                        output, refine.RefineConfig(mode="keypoints"))
            assert torch.get_num_threads() == workers
            refined[workers] = {name: read_keypoints(output, name) for name in HOMOGRAPHIES}
    finally:
        torch.set_num_threads(threads)
    for name in HOMOGRAPHIES:
        np.testing.assert_array_equal(refined[1][name], refined[3][name])


def test_aligned_keypoints_stay_inside_the_image():
    image = texture()
    height, width = image.shape[:2]
    config = PatchConfig(bound=4.0)
    starts = torch.tensor([[1.0, 1.0], [width - 2.0, height - 2.0]])
    for start, shift in zip(starts, (-3, 3)):
        # the target's content moved by `shift` px: the true match lies past the border
        target = prepare_image(np.roll(image, (shift, shift), axis=(0, 1)), 1.0)
        found, _ = align(target, templates(prepare_image(image, 1.0), start[None], config.size), start[None],
                         torch.eye(2)[None], PatchConfig(bound=4.0, min_ncc=-1.0))
        assert torch.all(found >= 0) and torch.all(found <= torch.tensor([width - 1, height - 1]))
        assert (found - start).abs().max() > 0.5  # it did move towards the border
