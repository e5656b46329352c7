"""reconstruct: a SIGKILL at each step, then a resume, gives the outputs of an uninterrupted run; a
second run into the same folder is refused at once; --overwrite validates before it deletes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pycolmap
import pytest

from d2_sfm import reconstruct
from d2_sfm.datasets.sample_scene import write_sample_scene
from d2_sfm.errors import D2SfmError
from d2_sfm.h5io import list_h5_names
from d2_sfm.reconstruct import STEPS, ReconstructionConfig

pytestmark = pytest.mark.slow
ENV = {**os.environ, "D2_SFM_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_sample_scene(tmp_path_factory.mktemp("kill") / "scene", num_views=6, size=(320, 240)) / "images"


def command(images, output):
    return [sys.executable, "-m", "d2_sfm.reconstruct", "--images", str(images), "--output", str(output),
            "--weights", "hed_vgg16", "--max-edge", "320", "--num-threads", "1"]


def run_until_step(images, output, step: str) -> int:
    """Start reconstruct and SIGKILL it as soon as it announces `step` (the step is then running)."""
    process = subprocess.Popen(command(images, output), env=ENV, stderr=subprocess.PIPE, text=True)
    banner = f"] {step}"
    for line in process.stderr:
        if banner in line and "already done" not in line:
            process.send_signal(signal.SIGKILL)
            break
    process.stderr.close()
    return process.wait()


def h5_content(path):
    with h5py.File(path, "r") as f:
        return {name: {key: f[name][key][()].tobytes() for key in f[name] if isinstance(f[name][key], h5py.Dataset)}
                for name in list_h5_names(path)}


def model_content(path):
    model = pycolmap.Reconstruction(str(path))
    poses = {im.name: np.round(im.cam_from_world().matrix(), 6).tolist() for im in model.images.values()
             if im.has_pose}
    return poses, model.num_points3D()


def outputs(out):
    summary = json.loads((out / "summary.json").read_text())
    stable = {k: summary[k] for k in ("status", "num_registered", "num_points3D", "mean_track_length",
                                      "mean_reprojection_error", "registered", "pairs", "warnings")}
    return (stable, h5_content(out / "features.h5"), h5_content(out / "matches.h5"),
            (out / "pairs.txt").read_text(), model_content(out / "sfm"))


def test_kill_at_every_step_then_resume_equals_an_uninterrupted_run(scene, tmp_path):
    reference = tmp_path / "reference"
    assert subprocess.run(command(scene, reference), env=ENV, capture_output=True).returncode in (0, 3)
    killed = tmp_path / "killed"
    for step in STEPS:
        assert run_until_step(scene, killed, step) == -signal.SIGKILL
    result = subprocess.run(command(scene, killed), env=ENV, capture_output=True, text=True)
    assert result.returncode in (0, 3), result.stderr[-2000:]
    assert outputs(killed) == outputs(reference)
    assert not list(killed.glob("*.partial")) and not list(killed.glob("*.lock"))


def test_second_run_into_the_same_folder_is_refused_at_once(scene, tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen(command(scene, out), env=ENV, stderr=subprocess.PIPE, text=True)
    for line in first.stderr:
        if "] extract" in line:
            break
    second = subprocess.run(command(scene, out), env=ENV, capture_output=True, text=True)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert second.returncode == 2, second.stderr[-2000:]
    assert "being written by another d2_sfm process" in second.stderr and "Traceback" not in second.stderr


def test_overwrite_checks_inputs_before_deleting(scene, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "features.h5").write_bytes(b"keep me")
    bad_pairs = tmp_path / "pairs.txt"
    bad_pairs.write_text("view_000.jpg\n")
    for config in (ReconstructionConfig(weights=str(tmp_path / "missing.pth")),
                   ReconstructionConfig(weights="hed_vgg16", pairs_file=bad_pairs)):
        with pytest.raises(D2SfmError):
            reconstruct.main(scene, out, config, overwrite=True)
        assert (out / "features.h5").read_bytes() == b"keep me"
