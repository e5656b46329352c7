"""Pairs step: exhaustive, sequential, retrieval (GeM over D2 maps), user files."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from d2_sfm import pairs
from d2_sfm.errors import D2SfmError
from d2_sfm.datasets.formats import read_pairs
from d2_sfm.pairs import PairsError
from d2_sfm.paths import UnsafePathError

NAMES = [f"img{i}.jpg" for i in range(6)]


def test_exhaustive_lists_every_unordered_pair_once():
    result = pairs.pairs_exhaustive(NAMES)
    assert len(result) == 15
    assert len({frozenset(p) for p in result}) == 15
    assert all(a != b for a, b in result)


def test_sequential_window_and_loop():
    assert pairs.pairs_sequential(NAMES[:4], 2) == [
        ("img0.jpg", "img1.jpg"), ("img0.jpg", "img2.jpg"), ("img1.jpg", "img2.jpg"),
        ("img1.jpg", "img3.jpg"), ("img2.jpg", "img3.jpg")]
    looped = pairs.pairs_sequential(NAMES[:4], 1, loop=True)
    assert {frozenset(p) for p in looped} == {frozenset(p) for p in
                                               [("img0.jpg", "img1.jpg"), ("img1.jpg", "img2.jpg"),
                                                ("img2.jpg", "img3.jpg"), ("img3.jpg", "img0.jpg")]}
    # a window larger than the sequence is exhaustive, never a self-pair or a duplicate
    assert len(pairs.pairs_sequential(NAMES, 10, loop=True)) == 15


def test_retrieval_takes_top_k_and_never_self():
    similarity = np.eye(4) + np.array([[0, .9, .1, .2], [.9, 0, .3, .1], [.1, .3, 0, .8], [.2, .1, .8, 0]])
    result = pairs.pairs_from_similarity(NAMES[:4], similarity, 1)
    assert {frozenset(p) for p in result} == {frozenset(("img0.jpg", "img1.jpg")), frozenset(("img2.jpg", "img3.jpg"))}
    assert len(pairs.pairs_from_similarity(NAMES[:4], similarity, 10)) == 6


def test_gem_pooling():
    dense = torch.rand(8, 5, 7)
    np.testing.assert_allclose(pairs.gem(dense, p=1.0).numpy(),
                               torch.nn.functional.normalize(dense.mean((1, 2)), dim=0).numpy(), rtol=1e-5)
    assert torch.isclose(pairs.gem(dense).norm(), torch.tensor(1.0))
    constant = torch.ones(4, 3, 3)
    np.testing.assert_allclose(pairs.gem(constant).numpy(), np.full(4, 0.5), rtol=1e-6)


def test_user_pairs_file_is_validated(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("img0.jpg img1.jpg\n# comment\n\nimg1.jpg img0.jpg\n")
    output = pairs.main(tmp_path / "pairs.txt", NAMES, pairs.PairsConfig(mode="file"), input_pairs=good)
    assert read_pairs(output) == [("img0.jpg", "img1.jpg")]

    escaping = tmp_path / "escaping.txt"
    escaping.write_text("img0.jpg ../secret.jpg\n")
    with pytest.raises(UnsafePathError, match="escaping.txt:1"):
        pairs.main(tmp_path / "pairs.txt", NAMES, pairs.PairsConfig(mode="file"), input_pairs=escaping)
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("img0.jpg other.jpg\n")
    with pytest.raises(PairsError, match="other.jpg"):
        pairs.main(tmp_path / "pairs.txt", NAMES, pairs.PairsConfig(mode="file"), input_pairs=unknown)
    assert issubclass(PairsError, D2SfmError) and issubclass(UnsafePathError, D2SfmError)


def test_too_few_images_and_bad_config():
    with pytest.raises(PairsError, match="at least 2"):
        pairs.main("unused.txt", NAMES[:1])
    with pytest.raises(PairsError):
        pairs.PairsConfig(mode="vocab")
    with pytest.raises(PairsError):
        pairs.PairsConfig(window=0)


def test_cli_defaults_match_config_and_write_hloc_file(tmp_path):
    (tmp_path / "images").mkdir()
    for name in NAMES[:3]:
        cv2.imwrite(str(tmp_path / "images" / name), np.zeros((8, 8, 3), np.uint8))
    args = pairs.build_parser().parse_args(["--output", "x", "--images", "y"])
    default = pairs.PairsConfig()
    assert (args.mode, args.window, args.num_matched, args.retrieval_max_edge) == \
        (default.mode, default.window, default.num_matched, default.retrieval_max_edge)
    assert pairs.cli(["--images", str(tmp_path / "images"), "--output", str(tmp_path / "p.txt")]) == 0
    assert (tmp_path / "p.txt").read_text().splitlines() == ["img0.jpg img1.jpg", "img0.jpg img2.jpg",
                                                              "img1.jpg img2.jpg"]


def test_retrieval_pairs_views_of_the_same_photo(tmp_path, hed_extractor_factory):
    """GeM over D2 maps: two crops of one photograph are closer than crops of another photograph."""
    skimage_data = pytest.importorskip("skimage.data")
    images = tmp_path / "images"
    images.mkdir()
    photos = {"astronaut": skimage_data.astronaut(), "coffee": skimage_data.coffee()}
    for label, photo in photos.items():
        for k, (y, x) in enumerate(((0, 0), (40, 60))):
            crop = np.ascontiguousarray(photo[y:y + 240, x:x + 320, ::-1])
            cv2.imwrite(str(images / f"{label}_{k}.png"), cv2.resize(crop, (160, 120)))
    names = sorted(p.name for p in images.iterdir())
    config = pairs.PairsConfig(mode="retrieval", num_matched=1, retrieval_max_edge=160)
    output = pairs.main(tmp_path / "pairs.txt", names, config, images, global_features=tmp_path / "global.h5",
                        extractor=hed_extractor_factory(max_edge=160))
    found = {frozenset(p) for p in read_pairs(output)}
    assert found == {frozenset(("astronaut_0.png", "astronaut_1.png")), frozenset(("coffee_0.png", "coffee_1.png"))}
    # the descriptors are reused: no extractor needed the second time
    pairs.main(tmp_path / "pairs2.txt", names, config, images, global_features=tmp_path / "global.h5")
