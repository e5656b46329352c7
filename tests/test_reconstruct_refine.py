"""--refine: the refine step writes OUT/features-refined.h5 and the database imports its keypoints;
with mode none the step is skipped and the database imports features.h5. Changing the mode redoes
the steps from refine on, never extraction, pairs or matching."""
from __future__ import annotations

import json

import numpy as np
import pycolmap

from d2_sfm import reconstruct
from d2_sfm.extractor import ExtractionConfig
from d2_sfm.h5io import read_keypoints
from d2_sfm.reconstruct import ReconstructionConfig
from d2_sfm.refine import RefineConfig


def database_keypoints(database) -> dict[str, np.ndarray]:
    with pycolmap.Database.open(str(database)) as db:
        return {image.name: db.read_keypoints(image.image_id)[:, :2] for image in db.read_all_images()}


def test_refined_keypoints_reach_the_database_and_none_skips_the_step(run_dir):
    images = run_dir.parent / "scene" / "images"
    before = json.loads((run_dir / "steps.json").read_text())
    for mode in ("keypoints", "none"):
        config = ReconstructionConfig(weights="hed_vgg16", extraction=ExtractionConfig(max_edge=320),
                                      refine=RefineConfig(mode=mode))
        summary = reconstruct.main(images, run_dir, config)
        source = run_dir / ("features-refined.h5" if mode == "keypoints" else "features.h5")
        stored = database_keypoints(run_dir / "database.db")
        assert stored and all(np.allclose(points, read_keypoints(source, name) + 0.5, atol=1e-4)
                              for name, points in stored.items())
        assert summary.data["settings"]["refine"]["mode"] == mode
        assert ("refine" in summary.data["timings"]) == (mode == "keypoints")
        steps = json.loads((run_dir / "steps.json").read_text())
        assert all(steps[step] == before[step] for step in ("extract", "pairs", "match"))
    refined = read_keypoints(run_dir / "features-refined.h5", next(iter(stored)))
    assert not np.array_equal(refined, read_keypoints(run_dir / "features.h5", next(iter(stored))))
