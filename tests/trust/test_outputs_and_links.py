"""Outputs: links are written through (one lock per real file), things that are not files are
never replaced, data files cannot make d2_sfm read other files, and a user's image folder is never
an output."""
from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from d2_sfm import atomic, reconstruct
from d2_sfm.errors import ConfigError, D2SfmError
from d2_sfm.h5io import H5FormatError, open_h5
from d2_sfm.locking import OutputLockedError, output_lock
from d2_sfm.paths import OutputPathError
from d2_sfm.training.trainer import TrainConfig, latest_checkpoint


def test_a_fifo_or_folder_output_is_refused_not_replaced(tmp_path):
    fifo = tmp_path / "out.txt"
    os.mkfifo(fifo)
    with pytest.raises(OutputPathError, match="not a regular file"):
        atomic.write_text(fifo, "x")
    assert fifo.is_fifo()
    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(OutputPathError):
        atomic.write_text(tmp_path / "dir.txt", "x")


def test_a_linked_output_is_written_through_and_shares_the_lock(tmp_path):
    target, link = tmp_path / "real.txt", tmp_path / "link.txt"
    target.write_text("old")
    link.symlink_to(target)
    atomic.write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    with output_lock(target):  # another process writing through the link is refused
        code = f"from d2_sfm.locking import output_lock\nwith output_lock({str(link)!r}): pass"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0 and OutputLockedError.__name__ in result.stderr


def test_hdf5_external_links_are_refused(tmp_path):
    secret = tmp_path / "elsewhere.h5"
    with h5py.File(secret, "w") as f:
        f["keypoints"] = np.zeros((2, 2), np.float32)
    features = tmp_path / "features.h5"
    with h5py.File(features, "w") as f:
        f["a.jpg"] = h5py.ExternalLink(str(secret), "/")
    with pytest.raises(H5FormatError, match="features.h5 links to other files"):
        open_h5(features)


def test_reconstruct_never_writes_into_the_image_folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (images / name).write_bytes(b"\xff\xd8\xff\xd9")
    with pytest.raises(D2SfmError, match="inside the image folder"):
        reconstruct.main(images, images / "out", reconstruct.ReconstructionConfig(weights="hed_vgg16"))
    assert sorted(p.name for p in images.iterdir()) == ["a.jpg", "b.jpg"]


def test_training_options_and_resume_point(tmp_path):
    for bad in (dict(batch_size=0), dict(lr=-1.0), dict(log_every=0), dict(crop_size=7), dict(seed=-1)):
        with pytest.raises(ConfigError):
            TrainConfig(output=str(tmp_path), **bad)
    assert latest_checkpoint(tmp_path) is None
    for step in (2, 10, 4):
        (tmp_path / f"step_{step:06d}.pth").write_bytes(b"")
    assert latest_checkpoint(tmp_path).name == "step_000010.pth"  # killed before last.pth was written
    (tmp_path / "last.pth").write_bytes(b"")
    assert latest_checkpoint(tmp_path).name == "last.pth"
