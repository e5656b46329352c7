"""Matcher: mutual nearest neighbours against a brute-force reference, int32 indices, chunking."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from d2_sfm import match as match_step
from d2_sfm.h5io import atomic_h5, read_matches, write_features, write_matches
from d2_sfm.matching import MatcherConfig, match_descriptors


def unit_rows(rng: np.random.Generator, n: int, d: int) -> torch.Tensor:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return torch.from_numpy(x / np.linalg.norm(x, axis=1, keepdims=True))


def brute_force(desc0: np.ndarray, desc1: np.ndarray, ratio: float | None = None,
                distance: float | None = None) -> np.ndarray:
    """Reference written loop by loop: hloc's NN-mutual with optional ratio and distance tests."""
    def nearest(a: np.ndarray, b: np.ndarray) -> list[int]:
        result = []
        for row in a:
            dist = np.sum((b - row) ** 2, axis=1)  # squared L2
            order = np.argsort(dist, kind="stable")
            ok = True
            if ratio is not None and len(b) > 1:
                ok &= dist[order[0]] <= ratio ** 2 * dist[order[1]]
            if distance is not None:
                ok &= dist[order[0]] <= distance ** 2
            result.append(int(order[0]) if ok else -1)
        return result

    forward, backward = nearest(desc0, desc1), nearest(desc1, desc0)
    return np.array([j if j >= 0 and backward[j] == i else -1 for i, j in enumerate(forward)])


@pytest.mark.parametrize("ratio,distance", [(None, None), (0.9, None), (None, 1.2), (0.95, 1.3)])
def test_mutual_nn_equals_brute_force(ratio, distance):
    rng = np.random.default_rng(0)
    desc1 = unit_rows(rng, 180, 16)
    desc0 = torch.nn.functional.normalize(desc1[rng.permutation(180)[:120]] + 0.3 * unit_rows(rng, 120, 16), dim=1)
    desc0 = torch.cat([desc0, unit_rows(rng, 60, 16)])  # plus unrelated descriptors
    config = MatcherConfig(ratio_threshold=ratio, distance_threshold=distance)
    matches0, scores0 = match_descriptors(desc0, desc1, config)
    expected = brute_force(desc0.numpy(), desc1.numpy(), ratio, distance)
    np.testing.assert_array_equal(matches0.numpy(), expected)
    assert (expected >= 0).sum() > 20  # the case is not trivially empty
    matched = expected >= 0
    cos = (desc0.numpy()[matched] * desc1.numpy()[expected[matched]]).sum(1)
    np.testing.assert_allclose(scores0.numpy()[matched], (cos + 1) / 2, atol=1e-5)
    assert np.all(scores0.numpy()[~matched] == 0)


def test_chunked_equals_unchunked():
    rng = np.random.default_rng(1)
    desc0, desc1 = unit_rows(rng, 333, 24), unit_rows(rng, 301, 24)
    for ratio in (None, 0.97):
        whole = match_descriptors(desc0, desc1, MatcherConfig(ratio_threshold=ratio, chunk_size=10 ** 6))
        chunked = match_descriptors(desc0, desc1, MatcherConfig(ratio_threshold=ratio, chunk_size=7))
        torch.testing.assert_close(whole[0], chunked[0])
        torch.testing.assert_close(whole[1], chunked[1])


def test_empty_sides_give_no_matches():
    rng = np.random.default_rng(2)
    matches0, scores0 = match_descriptors(unit_rows(rng, 5, 8), torch.zeros((0, 8)))
    assert matches0.tolist() == [-1] * 5 and scores0.tolist() == [0.0] * 5
    matches0, _ = match_descriptors(torch.zeros((0, 8)), unit_rows(rng, 5, 8))
    assert matches0.shape == (0,)


def test_indices_above_int16_survive_matching_and_hdf5(tmp_path):
    """hloc stores int16 and silently wraps 40000 to -25536; d2_sfm must keep int32 end to end."""
    rng = np.random.default_rng(3)
    desc1 = unit_rows(rng, 40_000, 8)
    targets = np.array([32_767, 32_768, 39_999, 35_000, 5])
    desc0 = desc1[targets].clone()
    matches0, _ = match_descriptors(desc0, desc1, MatcherConfig(chunk_size=256))
    np.testing.assert_array_equal(matches0.numpy(), targets)

    path = tmp_path / "matches.h5"
    with atomic_h5(path) as handle:
        write_matches(handle, "a.jpg", "b.jpg", matches0.numpy(), np.ones(len(targets)))
    import h5py

    with h5py.File(path, "r") as f:
        assert f["a.jpg/b.jpg/matches0"].dtype == np.int32
    pairs, _ = read_matches(path, "a.jpg", "b.jpg")
    np.testing.assert_array_equal(pairs[:, 1], targets)
    reversed_pairs, _ = read_matches(path, "b.jpg", "a.jpg")
    np.testing.assert_array_equal(reversed_pairs[:, 0], targets)


def test_match_step_writes_hloc_layout_and_resumes(tmp_path):
    rng = np.random.default_rng(4)
    features = tmp_path / "features.h5"
    descriptors = {n: unit_rows(rng, 50, 16).numpy() for n in ("a.jpg", "b.jpg", "c.jpg")}
    descriptors["b.jpg"][:30] = descriptors["a.jpg"][:30]
    with atomic_h5(features) as handle:
        for name, desc in descriptors.items():
            write_features(handle, name, rng.uniform(0, 100, (50, 2)), desc, np.ones(50), (100, 100))
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("a.jpg b.jpg\nb.jpg a.jpg\na.jpg c.jpg\n")
    output = match_step.main(pairs, features, tmp_path / "matches.h5")
    found, _ = read_matches(output, "a.jpg", "b.jpg")
    assert {(i, j) for i, j in found} >= {(k, k) for k in range(30)}
    before = output.stat().st_mtime_ns
    pairs.write_text("a.jpg b.jpg\na.jpg c.jpg\nb.jpg c.jpg\n")
    match_step.main(pairs, features, output)  # only b-c is new
    read_matches(output, "b.jpg", "c.jpg")
    assert output.stat().st_mtime_ns >= before
