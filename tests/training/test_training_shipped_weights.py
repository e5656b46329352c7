"""The shipped fine-tuned weights: official layout, float16, small enough, documented."""
from pathlib import Path

import pytest
import torch

from d2_sfm.weights import load_state_dict

WEIGHTS = Path(__file__).resolve().parents[2] / "d2_sfm" / "weights" / "d2_sfm_v1.pth"


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="d2_sfm_v1.pth not shipped in this checkout")
def test_shipped_weights_load_and_are_half_precision():
    assert WEIGHTS.stat().st_size <= 16_000_000
    state = load_state_dict(WEIGHTS)  # validates keys, shapes and finiteness; returns float32
    assert all(v.dtype == torch.float32 for v in state.values())
    raw = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float16 for v in raw["model"].values())
    assert WEIGHTS.with_suffix(".md").is_file()
