"""Bad checkpoints get one line naming the file (and key); pickled code never runs."""
import os
import subprocess
import sys

import pytest
import torch

from d2_sfm import weights
from d2_sfm.model import D2Net
from d2_sfm.weights import WeightsError, load_model, load_state_dict

KEY = "dense_feature_extraction.model.0.weight"


class WritesMarker:
    """Unpickling this would create the marker file: proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text and "weights_only=False" not in text and len(text) < 400
    return text


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64, torch.uint8])
def test_non_float_weights_are_refused_naming_the_key(tmp_path, dtype):
    state = D2Net().state_dict()
    state[KEY] = torch.zeros(state[KEY].shape, dtype=dtype)
    path = tmp_path / "int.pth"
    torch.save({"model": state}, path)
    with pytest.raises(WeightsError) as error:
        load_state_dict(path)
    text = one_line(error)
    assert "int.pth" in text and KEY in text and str(dtype) in text


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran.txt"
    path = tmp_path / "evil.pth"
    torch.save({"model": D2Net().state_dict(), "payload": WritesMarker(marker)}, path)
    with pytest.raises(WeightsError) as error:
        load_model(path)
    text = one_line(error)
    assert "evil.pth" in text and "pickled code" in text
    assert not marker.exists()


@pytest.mark.parametrize("content", ["list", "int_keys", "non_tensor", "text", "truncated"])
def test_malformed_checkpoints_give_one_line(tmp_path, content):
    path = tmp_path / f"{content}.pth"
    state = D2Net().state_dict()
    if content == "list":
        torch.save({"model": [1, 2, 3]}, path)
    elif content == "int_keys":
        torch.save({"model": {0: torch.zeros(1), "a": torch.zeros(1)}}, path)
    elif content == "non_tensor":
        state[KEY] = [0.0] * 10
        torch.save({"model": state}, path)
    elif content == "text":
        path.write_text("not a checkpoint")
    else:
        torch.save({"model": state}, path)
        path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(WeightsError) as error:
        load_state_dict(path)
    assert f"{content}.pth" in one_line(error)


def test_resolve_validates_on_request(tmp_path):
    path = tmp_path / "int.pth"
    state = D2Net().state_dict()
    state[KEY] = state[KEY].to(torch.int32)
    torch.save({"model": state}, path)
    assert weights.resolve(path).path == path  # cheap: existence and hash only
    with pytest.raises(WeightsError, match="int.pth"):
        weights.resolve(path, validate=True)


def test_extract_cli_refuses_a_pickled_checkpoint_in_one_line(tmp_path):
    marker = tmp_path / "ran.txt"
    evil = tmp_path / "evil.pth"
    torch.save({"model": D2Net().state_dict(), "payload": WritesMarker(marker)}, evil)
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.ppm").write_bytes(b"P6\n1 1\n255\n\x80\x80\x80")
    result = subprocess.run([sys.executable, "-m", "d2_sfm.extract", "--images", str(images),
                             "--output", str(tmp_path / "f.h5"), "--weights", str(evil)],
                            capture_output=True, text=True, env={**os.environ, "D2_SFM_OFFLINE": "1"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "weights_only=False" not in result.stderr
    assert "evil.pth" in result.stderr and not marker.exists()
