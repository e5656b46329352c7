"""Per-query pose estimation on Ray gives the local results, in the local order (a local Ray
instance started by the test; the driver reads the correspondences and writes the log)."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from d2_sfm.executors import ExecutorConfig, disconnect
from d2_sfm.h5io import read_features, read_matches, write_features, write_matches
from d2_sfm.localization.estimation import PoseEstimationConfig, QueryLog
from d2_sfm.localization.pose_from_model import ModelLocalizationConfig, main

from localization_scenes import camera

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")


def copies_of_the_query(scene, count: int) -> list[str]:
    """The scene's query under `count` names (features and matches copied), for several tasks."""
    features = read_features(scene.features, scene.query)
    pairs = {db: read_matches(scene.matches, scene.query, db)[0] for db in scene.db_names}
    names = [f"query/copy{i}.jpg" for i in range(count)]
    with h5py.File(scene.features, "a") as f, h5py.File(scene.matches, "a") as m:
        for name in names:
            write_features(f, name, features["keypoints"], features["descriptors"], features["scores"],
                           tuple(features["image_size"]))
            for db, pair in pairs.items():
                matches0 = np.full(len(features["keypoints"]), -1)
                matches0[pair[:, 0]] = pair[:, 1]
                write_matches(m, name, db, matches0, np.ones(len(matches0)))
    return names


@pytest.fixture
def local_ray(monkeypatch):
    """The local Ray instance that `ExecutorConfig(kind="ray")` starts, stopped after the test; its
    traffic stays on loopback, and it leaves no auth token that would lock out later test clusters."""
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield
    if ray.is_initialized():
        disconnect(ray)


def test_ray_poses_equal_the_local_ones_in_the_same_order(model_scene, tmp_path, local_ray):
    names = [model_scene.query] + copies_of_the_query(model_scene, 5)
    queries = {name: camera() for name in names}
    retrieval = {name: model_scene.db_names for name in names}
    retrieval[names[-1]] = []  # a failure travels too
    config = ModelLocalizationConfig(PoseEstimationConfig(ransac_max_error=1.0), covisibility_clustering=True)
    runs = {}
    for kind in ("local", "ray"):
        log = QueryLog(tmp_path / f"{kind}.jsonl", {"test": 1})
        runs[kind] = main(model_scene.reconstruction, queries, retrieval, model_scene.features,
                          model_scene.matches, config, log, ExecutorConfig(kind=kind, max_in_flight=2))
        assert set(QueryLog(tmp_path / f"{kind}.jsonl", {"test": 1}).done) == set(names)
    local, remote = runs["local"], runs["ray"]
    assert [r.name for r in remote] == [r.name for r in local] == names
    for a, b in zip(local, remote):
        assert (a.failure, a.num_inliers, a.num_correspondences, a.db_used) == \
            (b.failure, b.num_inliers, b.num_correspondences, b.db_used)
        if a.success:
            np.testing.assert_array_equal(a.cam_from_world.matrix(), b.cam_from_world.matrix())
    assert remote[-1].failure == "no retrieved database image" and sum(r.success for r in remote) == 5
