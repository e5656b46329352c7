"""Keypoint adjustment through the refine step, both methods: real images (a textured scene and
shifted copies of it), real HDF5 features/matches files; method features uses the real D2
backbone (hed_vgg16). The photometric method's own geometry: tests/test_refine_patches.py."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from d2_sfm import refine
from d2_sfm.refinement.features_file import RefineSummary
from d2_sfm.cli import run_cli
from d2_sfm.h5io import atomic_h5, read_keypoints, write_features, write_matches
from d2_sfm.refinement import build_tracks

SIZE = (192, 144)  # W, H
SHIFTS = {"a.png": (0.0, 0.0), "b.png": (1.3, -0.6), "c.png": (-0.7, 0.9)}  # true sub-pixel translations


def texture(seed: int = 0) -> np.ndarray:
    """A smooth random RGB texture with blobs and edges at several scales (uint8, H x W x 3)."""
    rng = np.random.default_rng(seed)
    width, height = SIZE
    image = np.zeros((height, width, 3), np.float32)
    for sigma, weight in ((1.5, 0.5), (4.0, 1.0), (9.0, 1.0)):
        noise = rng.normal(size=(height, width, 3)).astype(np.float32)
        image += weight * cv2.GaussianBlur(noise, (0, 0), sigma) * sigma
    image = (image - image.min()) / (image.max() - image.min()) * 255
    return image.astype(np.uint8)


def shifted(image: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    """Content moved by +shift (x, y) pixels, bicubic."""
    matrix = np.array([[1, 0, shift[0]], [0, 1, shift[1]]], np.float32)
    return cv2.warpAffine(image, matrix, SIZE, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def grid_points() -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(24, SIZE[0] - 24, 12.0), np.arange(24, SIZE[1] - 24, 12.0))
    return np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float32)


def write_scene(root: Path, perturb: float = 1.0, seed: int = 1, outlier: bool = False) -> dict[str, np.ndarray]:
    """Images, features (truth + noise), exhaustive matches of equal indices, pairs; returns the truth."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    base = texture()
    rng = np.random.default_rng(seed)
    truth, points = {}, grid_points()
    for name, shift in SHIFTS.items():
        image = shifted(base, shift)
        if outlier and name == "c.png":
            image = texture(seed=7)  # unrelated content: every observation in c is an outlier
        cv2.imwrite(str(images / name), image[:, :, ::-1])
        truth[name] = points + np.float32(shift)
    with atomic_h5(root / "features.h5") as f:
        for index, name in enumerate(SHIFTS):
            noisy = truth[name] + (rng.uniform(-perturb, perturb, truth[name].shape) if index else 0)
            write_features(f, name, noisy, rng.normal(size=(len(points), 8)), np.ones(len(points)), SIZE)
    names = list(SHIFTS)
    identity = np.arange(len(points))
    with atomic_h5(root / "matches.h5") as f:
        for i in range(3):
            for j in range(i + 1, 3):
                write_matches(f, names[i], names[j], identity, np.full(len(points), 0.9 - 0.1 * (i + j)))
    (root / "pairs.txt").write_text("a.png b.png\na.png c.png\nb.png c.png\n")
    return truth


def run(root: Path, output: str = "refined.h5", **config) -> RefineSummary:
    config.setdefault("weights", "hed_vgg16")
    return refine.main(root / "images", root / "features.h5", root / "matches.h5", root / "pairs.txt",
                       root / output, refine.RefineConfig(mode="keypoints", **config))


def errors(path: Path, truth: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.linalg.norm(read_keypoints(path, name) - truth[name], axis=1) for name in truth])


def test_tracks_hold_one_keypoint_per_image_and_the_best_root():
    offsets = np.array([0, 3, 6, 9])  # three images of three keypoints: ids 0-2, 3-5, 6-8
    edges = np.array([[0, 3], [3, 6], [0, 4], [1, 7], [0, 7]])
    scores = np.array([0.9, 0.8, 0.95, 0.5, 0.1])
    tracks = build_tracks(edges, scores, offsets)
    # strongest first: 0-4 joins; 0-3 is refused (4 already holds image 1); 3-6 and 1-7 form tracks;
    # 0-7 is refused (both tracks hold image 0)
    groups = {tuple(sorted(tracks.nodes[tracks.track == t].tolist())) for t in range(tracks.num_tracks)}
    assert groups == {(0, 4), (3, 6), (1, 7)}
    assert sorted(map(sorted, tracks.edges.tolist())) == [[0, 4], [1, 7], [3, 6]]
    assert sorted(tracks.root.tolist()) == [0, 1, 3]  # equal scores within a track: the lowest id
    for t in range(tracks.num_tracks):
        members = tracks.nodes[tracks.track == t]
        images = np.searchsorted(offsets, members, side="right") - 1
        assert len(set(images.tolist())) == len(members)
        assert tracks.root[t] in members


@pytest.mark.parametrize("method", ["patches", "features"])
def test_refinement_recovers_known_subpixel_shifts(tmp_path, method):
    truth = write_scene(tmp_path, perturb=1.5)
    before = errors(tmp_path / "features.h5", truth)
    summary = run(tmp_path, method=method)
    after = errors(tmp_path / "refined.h5", truth)
    assert summary.num_tracks == len(grid_points()) and summary.keypoints_moved == 2 * len(grid_points())
    assert np.median(before) > 0.8
    assert np.median(after) < 0.15, np.median(after)
    assert np.mean(after < 0.5) > 0.9


@pytest.mark.parametrize("method", ["patches", "features"])
def test_outlier_observation_stays_within_the_bound(tmp_path, method):
    truth = write_scene(tmp_path, perturb=0.5, outlier=True)
    if method == "features":
        config, bound = {"layers": ("conv2_2",), "bounds": (1.5,)}, 1.5 * 2  # cells of stride 2
    else:
        config, bound = {"patch": refine.PatchConfig(bound=3.0)}, 3.0  # pixels (no resizing here)
    run(tmp_path, method=method, **config)
    start = read_keypoints(tmp_path / "features.h5", "c.png")
    moved = np.abs(read_keypoints(tmp_path / "refined.h5", "c.png") - start)
    assert moved.max() <= bound + 1e-3
    good = np.concatenate([np.linalg.norm(read_keypoints(tmp_path / "refined.h5", n) - truth[n], axis=1)
                           for n in ("a.png", "b.png")])
    assert np.median(good) < 0.3  # the consistent observations still align


def test_resume_redoes_only_when_inputs_change(tmp_path):
    write_scene(tmp_path, perturb=1.0)
    first = run(tmp_path)
    assert sorted(first.written) == sorted(SHIFTS)
    again = run(tmp_path)
    assert again.written == [] and sorted(again.skipped_existing) == sorted(SHIFTS)
    with atomic_h5(tmp_path / "features.h5") as f:  # b's features change (same count)
        keypoints = f["b.png"]["keypoints"][()] + 0.25
        write_features(f, "b.png", keypoints, np.ones((len(keypoints), 8)), np.ones(len(keypoints)), SIZE)
    changed = run(tmp_path)
    assert "b.png" in changed.written
    other_method = run(tmp_path, method="features", layers=("conv1_2",), bounds=(2.0,))
    assert sorted(other_method.written) == sorted(SHIFTS)
    other_patch = run(tmp_path, patch=refine.PatchConfig(size=13))
    assert sorted(other_patch.written) == sorted(SHIFTS)


@pytest.mark.parametrize("problem", ["missing matches", "unknown image"])
def test_bad_inputs_are_one_line_errors(tmp_path, problem, caplog):
    write_scene(tmp_path)
    if problem == "missing matches":
        (tmp_path / "matches.h5").unlink()
        expected = "matches file"
    else:
        (tmp_path / "pairs.txt").write_text("a.png nowhere.png\n")
        expected = "nowhere.png"
    argv = ["--images", str(tmp_path / "images"), "--features", str(tmp_path / "features.h5"),
            "--matches", str(tmp_path / "matches.h5"), "--pairs", str(tmp_path / "pairs.txt"),
            "--output", str(tmp_path / "refined.h5"), "--weights", "hed_vgg16"]
    assert run_cli(refine.cli, argv) == 2
    errors_logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors_logged) == 1 and expected in errors_logged[0] and "\n" not in errors_logged[0]
    assert not (tmp_path / "refined.h5").exists()


def test_query_keypoints_align_to_database_observations():
    import torch

    from d2_sfm.refinement import SolverConfig, backbone, dense_maps, descriptors_at, refine_query_keypoints
    from d2_sfm.weights import load_model

    model, _ = load_model("hed_vgg16")
    layers = ("conv2_2", "conv1_2")
    network = backbone(model, layers)
    database, query = texture(), shifted(texture(), (0.8, -1.1))
    points = grid_points()
    truth = points + np.float32([0.8, -1.1])
    start = truth + np.random.default_rng(3).uniform(-1.5, 1.5, truth.shape).astype(np.float32)
    references = [descriptors_at(m, torch.from_numpy(points)) for m in dense_maps(network, layers, database, SIZE)]
    solvers = [SolverConfig(bound=1.5), SolverConfig(bound=2.0)]
    refined = refine_query_keypoints(dense_maps(network, layers, query, SIZE), start, references, solvers)
    before, after = (np.linalg.norm(p - truth, axis=1) for p in (start, refined))
    assert np.median(after) < 0.15 < 0.5 < np.median(before)
