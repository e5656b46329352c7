from __future__ import annotations

import numpy as np
import pycolmap
import pytest

from d2_sfm.datasets.formats import write_poses
from d2_sfm.localization import evaluate
from d2_sfm.localization.evaluate import THRESHOLDS, pose_errors

from localization_scenes import look_at


def moved(pose: pycolmap.Rigid3d, metres: float = 0.0, degrees: float = 0.0) -> pycolmap.Rigid3d:
    """The same camera moved sideways by `metres` and turned about its y axis by `degrees`."""
    turn = pycolmap.Rotation3d(np.array([0.0, np.deg2rad(degrees), 0.0]))
    centre = pose.inverse().translation + metres * pose.rotation.matrix()[0]
    rotation = turn * pose.rotation
    return pycolmap.Rigid3d(rotation, -(rotation.matrix() @ centre))


def test_pose_errors_are_centre_distance_and_rotation_angle():
    truth = look_at([1, 2, 3], [0, 0, 0])
    position, rotation = pose_errors(moved(truth, 0.3, 4.0), truth)
    assert position == pytest.approx(0.3) and rotation == pytest.approx(4.0)


def test_recall_per_threshold_and_group_missing_queries_fail():
    truth = {n: look_at([i, 0, 0], [i, 5, 0]) for i, n in enumerate("abcd")}
    estimates = {"a": moved(truth["a"], 0.1, 1.0), "b": moved(truth["b"], 0.4, 3.0), "c": moved(truth["c"], 3.0, 1.0)}
    report = evaluate.evaluate(estimates, truth, THRESHOLDS["aachen"], {"a": "day", "b": "day", "c": "night", "d": "night"})
    assert report["groups"]["all"]["recall"] == [0.25, 0.5, 0.75]
    assert report["groups"]["day"]["recall"] == [0.5, 1.0, 1.0]
    assert report["groups"]["night"]["recall"] == [0.0, 0.0, 0.5]
    assert report["errors"]["d"] == {"position": None, "rotation_deg": None}
    assert "day (2): 50.0 / 100.0 / 100.0 %" in evaluate.format_report(report)


def test_inloc_thresholds_use_ten_degrees():
    truth = {"q": look_at([0, 0, 0], [0, 5, 0])}
    report = evaluate.evaluate({"q": moved(truth["q"], 0.2, 9.0)}, truth, THRESHOLDS["inloc"])
    assert report["groups"]["all"]["recall"] == [1.0, 1.0, 1.0]


def test_main_reads_results_files(tmp_path):
    truth = {"q1.jpg": look_at([0, 0, 0], [0, 5, 0]), "q2.jpg": look_at([1, 0, 0], [0, 5, 0])}
    write_poses(tmp_path / "gt.txt", truth)
    write_poses(tmp_path / "results.txt", {"q1.jpg": truth["q1.jpg"], "q2.jpg": moved(truth["q2.jpg"], 1.0)})
    report = evaluate.main(tmp_path / "results.txt", tmp_path / "gt.txt", output=tmp_path / "eval.json")
    assert report["groups"]["all"]["recall"] == [0.5, 0.5, 1.0]
    assert (tmp_path / "eval.json").is_file()
