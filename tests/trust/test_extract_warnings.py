"""Suspect inputs are never accepted silently: they are named and counted in the extract summary."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from d2_sfm import extract
from d2_sfm.images import ImageError


@pytest.fixture(scope="module")
def extractor(hed_extractor_factory):
    return hed_extractor_factory(max_edge=320)


@pytest.fixture
def image_dir(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    photo = cv2.resize(skdata.astronaut(), (320, 240), interpolation=cv2.INTER_AREA)[:, :, ::-1]
    cv2.imwrite(str(root / "good.jpg"), photo)
    data = cv2.imencode(".jpg", photo)[1].tobytes()
    scan = data.find(b"\xff\xda")
    (root / "half_garbage.jpg").write_bytes(data[: scan + 1500] + b"\xff\xd3garbage\xff\xd5" + data[scan + 1500:])
    cv2.imwrite(str(root / "blank.png"), np.full((240, 320, 3), 128, np.uint8))
    cv2.imwrite(str(root / "a b.jpg"), photo)  # a name hloc's pairs files cannot hold
    return root


def test_half_garbage_textureless_and_unlistable_files_are_counted(image_dir, tmp_path, extractor):
    summary = extract.main(image_dir, tmp_path / "f.h5", extractor=extractor)
    assert sorted(summary.extracted) == ["blank.png", "good.jpg", "half_garbage.jpg"]
    assert set(summary.warnings) == {"half_garbage.jpg", "blank.png"}
    assert "corrupt" in summary.warnings["half_garbage.jpg"].lower()
    assert "keypoints" in summary.warnings["blank.png"]
    assert "a b.jpg" in summary.failed and "whitespace" in summary.failed["a b.jpg"]


def test_image_list_refuses_names_pairs_files_cannot_hold(tmp_path):
    image_list = tmp_path / "list.txt"
    image_list.write_text("good.jpg\nsub/a b.jpg\n")
    with pytest.raises(ImageError, match="list.txt:2.*whitespace"):
        extract.read_image_list(image_list)
    image_list.write_bytes(b"good.jpg\n\xff\xfe.jpg\n")
    with pytest.raises(Exception, match="list.txt:2.*UTF-8"):
        extract.read_image_list(image_list)
    image_list.write_text("sub/k.jpg\nsub-k.jpg\n")
    with pytest.raises(Exception, match="sub/k.jpg.*sub-k.jpg"):
        extract.read_image_list(image_list)
