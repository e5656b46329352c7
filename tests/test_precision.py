"""--precision: auto is exact fp32, bf16 is close to it, GPU-only modes are refused on a CPU, and the
resolved precision is what outputs record (a resume never mixes them)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree
from skimage import data as skdata

from d2_sfm.errors import ConfigError
from d2_sfm.extractor import AUTO_PRECISION, D2Extractor, ExtractionConfig, resolve_precision


def test_auto_resolves_and_gpu_modes_need_a_gpu():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == AUTO_PRECISION == "fp32"
    for mode in ("fp16", "tf32"):
        with pytest.raises(ConfigError, match=mode):
            resolve_precision(mode, cpu)
    with pytest.raises(ConfigError, match="precision"):
        ExtractionConfig(precision="int8")


def test_bf16_keeps_most_keypoints_and_is_recorded():
    image = skdata.astronaut()[::2, ::2].copy()  # 256 x 256 RGB
    fp32 = D2Extractor("hed_vgg16", ExtractionConfig(max_edge=256))
    bf16 = D2Extractor("hed_vgg16", ExtractionConfig(max_edge=256, precision="bf16"))
    assert fp32.config.as_attributes()["precision"] == "fp32"
    assert bf16.config.as_attributes()["precision"] == "bf16"
    reference, other = fp32.extract_array(image), bf16.extract_array(image)
    distance, nearest = cKDTree(other.keypoints).query(reference.keypoints)
    assert (distance <= 1.0).mean() >= 0.85
    close = distance <= 1.0
    cosine = (reference.descriptors[close] * other.descriptors[nearest[close]]).sum(1)
    assert np.median(cosine) > 0.99
