"""Matches as the exporters read them from a run folder (d2_sfm.run_folder), on hand-built files."""
from __future__ import annotations

import h5py
import numpy as np

from d2_sfm.h5io import write_matches
from d2_sfm.run_folder import RunFolder, iter_pair_matches


def test_a_pair_stored_in_the_other_order_keeps_each_index_with_its_image(tmp_path):
    # a.jpg has 6 keypoints, b.jpg 2; the file stores the pair as (b, a): b's 0 <-> a's 5
    with h5py.File(tmp_path / "matches.h5", "w") as f:
        write_matches(f, "b.jpg", "a.jpg", np.array([5, -1]), np.array([0.75, 0.0]))
    (tmp_path / "pairs.txt").write_text("a.jpg b.jpg\n")
    run = RunFolder(tmp_path, "reconstruct", tmp_path / "features.h5", None,
                    [(tmp_path / "pairs.txt", tmp_path / "matches.h5")])
    [(name0, name1, pairs, scores)] = list(iter_pair_matches(run, {"a.jpg", "b.jpg"}))
    by_image = {name0: pairs[:, 0].tolist(), name1: pairs[:, 1].tolist()}
    assert by_image == {"a.jpg": [5], "b.jpg": [0]}
    np.testing.assert_allclose(scores, [0.75])
