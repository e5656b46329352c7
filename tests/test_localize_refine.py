"""`localize --refine keypoints`: database keypoints refined before triangulation (Aachen) and each
correspondence's query keypoint aligned to its database observation before PnP (Aachen, InLoc);
recorded in the run's settings so that a resume with the other mode redoes, never reuses; mode
none leaves the run as it was. Real synthetic datasets (320 x 240), hed_vgg16 features."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pycolmap
import pytest
import torch

from d2_sfm import localize
from d2_sfm.cli import run_cli
from d2_sfm.datasets import synthetic
from d2_sfm.h5io import read_keypoints
from d2_sfm.images import read_image
from d2_sfm.localization.config import RunPaths
from d2_sfm.localization.query_refinement import QueryRefiner
from d2_sfm.refine import RefineConfig

pytestmark = pytest.mark.slow
SIZE = (320, 240)


@pytest.fixture(scope="module")
def extractor(hed_extractor_factory):
    return hed_extractor_factory(max_edge=SIZE[0])


def run(layout, root, output, extractor, mode):
    pairs = next((root / "pairs").glob("pairs-query-gt-covis*.txt"))
    config = localize.LocalizationConfig(num_retrieved=6, refine=RefineConfig(mode=mode))
    results = localize.main(layout, root, output, pairs, config, extractor=extractor)
    return results, json.loads((results.parent / "summary.json").read_text())


def median_position_error(summary) -> float:
    return summary["evaluation"]["groups"]["all"]["median_position_error"]


def model_keypoints(sfm) -> dict[str, np.ndarray]:
    """The triangulated model's 2D points per image, in HDF5 pixels."""
    model = pycolmap.Reconstruction(str(sfm))
    return {image.name: np.array([p.xy for p in image.points2D]) - 0.5 for image in model.images.values()}


def test_aachen_modes_switch_and_resume_without_mixing(tmp_path, extractor):
    root = synthetic.main("aachen_v1_1", tmp_path / "dataset", num_db=6, num_queries=2, image_size=SIZE)
    paths = RunPaths(tmp_path / "out")
    plain, summary = run("aachen_v1_1", root, paths.output, extractor, "none")
    plain_poses = plain.read_text()
    assert summary["settings"]["refine"]["mode"] == "none"
    assert "refine_db" not in summary["timings_s"] and "refine_queries" not in summary["timings_s"]
    assert not paths.db_refined_features.exists()
    for name, points in model_keypoints(paths.sfm).items():  # mode none: the extracted keypoints as they are
        assert np.allclose(points, read_keypoints(paths.features, name), atol=1e-4)
    features_mtime = paths.features.stat().st_mtime_ns

    plain_error = median_position_error(summary)
    refined, summary = run("aachen_v1_1", root, paths.output, extractor, "keypoints")
    assert refined == plain
    assert median_position_error(summary) < plain_error / 2  # measured: 0.17 m -> 0.013 m
    assert summary["settings"]["refine"]["mode"] == "keypoints"
    assert summary["timings_s"]["refine_db"] > 0 and summary["timings_s"]["refine_queries"] > 0
    assert summary["num_localized"] == summary["num_queries"]
    moved = 0
    for name, points in model_keypoints(paths.sfm).items():  # the model holds the refined database keypoints
        assert np.allclose(points, read_keypoints(paths.db_refined_features, name), atol=1e-4)
        moved += int((np.abs(points - read_keypoints(paths.features, name)) > 1e-3).any(1).sum())
    assert moved > 100
    assert paths.features.stat().st_mtime_ns == features_mtime  # the extracted features are never modified
    header = json.loads(paths.pose_log.read_text().splitlines()[0])
    assert header["settings"]["config"]["refine"]["mode"] == "keypoints"
    assert refined.read_text() != plain_poses  # refined query keypoints give other poses

    refined_model = pycolmap.Reconstruction(str(paths.sfm))
    adjusted, summary = run("aachen_v1_1", root, paths.output, extractor, "keypoints+bundle")
    assert summary["timings_s"]["bundle_db"] > 0 and summary["num_localized"] == summary["num_queries"]
    adjusted_model = pycolmap.Reconstruction(str(paths.sfm))  # points adjusted, reference poses kept
    assert (adjusted_model.compute_mean_reprojection_error()
            < 0.9 * refined_model.compute_mean_reprojection_error())
    for image in refined_model.images.values():
        other = adjusted_model.find_image_with_name(image.name)
        assert np.allclose(other.cam_from_world().matrix(), image.cam_from_world().matrix(), atol=1e-9)

    again, _ = run("aachen_v1_1", root, paths.output, extractor, "none")  # back: rebuilt, not reused
    assert again.read_text() == plain_poses
    for name, points in model_keypoints(paths.sfm).items():
        assert np.allclose(points, read_keypoints(paths.features, name), atol=1e-4)


def test_inloc_query_keypoints_are_refined(tmp_path, extractor):
    root = synthetic.main("inloc", tmp_path / "dataset", num_db=6, num_queries=2, image_size=SIZE)
    output = tmp_path / "out"
    plain, summary = run("inloc", root, output, extractor, "none")
    plain_poses, plain_error = plain.read_text(), median_position_error(summary)
    refined, summary = run("inloc", root, output, extractor, "keypoints")
    assert median_position_error(summary) < plain_error / 2  # measured: 0.07 m -> 0.004 m
    assert summary["settings"]["refine"]["mode"] == "keypoints"
    assert summary["timings_s"]["refine_queries"] > 0
    assert "refine_db" not in summary["timings_s"]  # the cutouts' 3D is the scans': no database refinement
    assert summary["num_localized"] == summary["num_queries"]
    assert refined.read_text() != plain_poses


def shifted(image: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    """The image moved by a sub-pixel `shift` (x, y): pixel p of the input is at p + shift."""
    warp = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
    return cv2.warpAffine(image, warp, (image.shape[1], image.shape[0]), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)


@pytest.mark.parametrize("method", ["patches", "features"])
def test_query_refiner_recovers_a_known_offset_per_correspondence(tmp_path, extractor, method):
    """A query that is a database image moved by (1.3, -0.7) px: keypoints started 1.5 px off the
    truth come back to it; two copies of one query keypoint matched to different database
    observations move each to its own."""
    root = synthetic.main("aachen_v1_1", tmp_path / "dataset", num_db=2, num_queries=1, image_size=SIZE)
    images = root / "images_upright"
    database = read_image(images / "db" / "1000.jpg")
    truth_shift = np.array([1.3, -0.7])
    cv2.imwrite(str(images / "query_shifted.png"), cv2.cvtColor(shifted(database, tuple(truth_shift)),
                                                                 cv2.COLOR_RGB2BGR))
    gray = cv2.cvtColor(database, cv2.COLOR_RGB2GRAY)
    corners = cv2.goodFeaturesToTrack(gray, 200, 0.01, 8, blockSize=5)[:, 0]
    inside = (corners > 12).all(1) & (corners < np.array(SIZE) - 12).all(1)
    db_keypoints = corners[inside].astype(np.float32)
    rng = np.random.default_rng(0)
    start = db_keypoints + truth_shift + rng.uniform(-1.5, 1.5, db_keypoints.shape)
    refiner = QueryRefiner.for_run(images, RefineConfig(mode="keypoints", method=method), extractor.model,
                                   torch.device("cpu"))
    refined = refiner("query_shifted.png", start, ["db/1000.jpg"] * len(start), db_keypoints)
    before = np.linalg.norm(start - db_keypoints - truth_shift, axis=1)
    after = np.linalg.norm(refined - db_keypoints - truth_shift, axis=1)
    assert np.median(after) < 0.35 < np.median(before), (np.median(before), np.median(after))
    itself = refiner("db/1000.jpg", db_keypoints, ["db/1000.jpg"] * len(db_keypoints), db_keypoints)
    assert np.abs(itself - db_keypoints).max() < 0.05  # pixel conventions agree on both sides

    # copies of one query keypoint: one matched to the true observation, one to a point 3 px away
    copies = np.repeat(start[:1], 2, axis=0)
    observations = np.stack([db_keypoints[0], db_keypoints[0] + [3.0, 0.0]]).astype(np.float32)
    moved = refiner("query_shifted.png", copies, ["db/1000.jpg"] * 2, observations)
    assert np.linalg.norm(moved[0] - db_keypoints[0] - truth_shift) < 0.5
    assert abs((moved[1] - moved[0])[0]) > 1.0  # each copy went its own way


def test_bad_refine_value_is_an_argument_error(tmp_path, capsys):
    root = tmp_path / "dataset"
    root.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(localize.cli, ["--dataset", "aachen", "--root", str(root), "--refine", "magic"])
    assert exit_info.value.code == 2
    assert "argument --refine: invalid choice: 'magic'" in capsys.readouterr().err
