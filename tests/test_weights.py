"""Checkpoints in the official layout, the HED conversion, and clear errors for bad weights."""
import argparse
import functools
import http.server
import logging
import socket
import threading
import urllib.error

import h5py
import numpy as np
import pytest
import torch

from d2_sfm import weights
from d2_sfm.model import CONV_INDICES, D2Net, feature_map_size
from d2_sfm.weights import WeightsError, load_model, load_state_dict, save_checkpoint

OFFICIAL_KEYS = {f"dense_feature_extraction.model.{i}.{p}" for i in CONV_INDICES for p in ("weight", "bias")}


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints" / "d2-net"


def official_style_checkpoint(path, seed=0):
    """A checkpoint as the official train.py writes it: model + args Namespace + history."""
    torch.manual_seed(seed)
    state = D2Net().state_dict()
    torch.save({"args": argparse.Namespace(lr=1e-3, preprocessing="caffe"), "epoch_idx": 10,
                "model": state, "train_loss_history": [0.5, 0.4]}, path)
    return state


def test_state_dict_keys_match_the_official_layout():
    assert set(D2Net().state_dict()) == OFFICIAL_KEYS
    assert sum(p.numel() for p in D2Net().parameters()) == 7_635_264


def test_output_is_512_channels_at_stride_4():
    out = D2Net()(torch.zeros(1, 3, 61, 86))
    assert out.shape == (1, 512, *feature_map_size(61, 86)) == (1, 512, 14, 20)


def test_official_checkpoint_round_trip_with_weights_only(tmp_path):
    path = tmp_path / "d2_tf.pth"
    state = official_style_checkpoint(path)
    model, info = load_model(path)
    assert info.name == "d2_tf.pth" and len(info.sha256) == 64
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


def test_save_checkpoint_writes_official_layout(tmp_path):
    state = D2Net().state_dict()
    path = save_checkpoint(state, tmp_path / "sub" / "x.pth")
    raw = torch.load(path, weights_only=True)
    assert set(raw["model"]) == OFFICIAL_KEYS
    assert all(torch.equal(load_state_dict(path)[k], state[k]) for k in state)


def test_truncated_checkpoint_is_reported(tmp_path):
    path = tmp_path / "cut.pth"
    official_style_checkpoint(path)
    path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(WeightsError, match="cut.pth.*could not be read"):
        load_model(path)


def test_wrong_checkpoint_is_reported(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(64, 3, 7, 7)}}, path)
    with pytest.raises(WeightsError, match="resnet.pth is not a D2-Net checkpoint"):
        load_model(path)
    state = D2Net().state_dict()
    state["dense_feature_extraction.model.21.weight"] = torch.zeros(256, 512, 3, 3)
    torch.save({"model": state}, path)
    with pytest.raises(WeightsError, match="model.21.weight has shape"):
        load_model(path)


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": D2Net().state_dict(), "hook": logging.getLogger("x")}, path)
    with pytest.raises(WeightsError, match="evil.pth"):
        load_model(path)


def test_unknown_name_is_reported():
    with pytest.raises(WeightsError, match="neither a known name"):
        load_model("d2_nonexistent")


def test_named_checkpoint_offline_says_where_to_put_it(cache_home, monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    with pytest.raises(WeightsError) as error:
        load_model("d2_tf")
    assert "dusmanu.com/files/d2-net/d2_tf.pth" in str(error.value)
    assert str(cache_home / "d2_tf.pth") in str(error.value)
    assert not any(cache_home.glob("*")) if cache_home.exists() else True


def test_named_checkpoint_is_loaded_from_the_cache(cache_home):
    cache_home.mkdir(parents=True)
    state = official_style_checkpoint(cache_home / "d2_ots.pth", seed=3)
    model, info = load_model("d2_ots")
    assert info.name == "d2_ots"
    assert torch.equal(model.state_dict()["dense_feature_extraction.model.0.weight"],
                       state["dense_feature_extraction.model.0.weight"])


def test_default_prefers_cached_d2_tf_else_offline_hed(cache_home, monkeypatch, caplog):
    monkeypatch.setenv("D2_SFM_OFFLINE", "1")
    with caplog.at_level(logging.WARNING):
        assert weights.resolve(None).name == "hed_vgg16"
    assert "hed_vgg16" in caplog.text and "D2_SFM_OFFLINE" in caplog.text
    cache_home.mkdir(parents=True, exist_ok=True)
    official_style_checkpoint(cache_home / "d2_tf.pth")
    assert weights.resolve(None).name == "d2_tf"


@pytest.fixture
def local_server(tmp_path, monkeypatch):
    """A real HTTP server on 127.0.0.1 serving tmp_path/served; OFFICIAL_URL points at it."""
    served = tmp_path / "served"
    served.mkdir()
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # a proxy from the environment must not see it
    handler = functools.partial(QuietHandler, directory=str(served))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        monkeypatch.setattr(weights, "OFFICIAL_URL", f"http://127.0.0.1:{server.server_port}/{{name}}.pth")
        yield served
        server.shutdown()
        thread.join()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_is_validated_before_it_enters_the_cache(cache_home, local_server, tmp_path):
    (local_server / "d2_tf.pth").write_bytes(b"<html>404</html>")
    with pytest.raises(WeightsError):
        weights.download_official("d2_tf")
    assert not (cache_home / "d2_tf.pth").exists()
    good = tmp_path / "good.pth"
    official_style_checkpoint(good)
    (local_server / "d2_tf.pth").write_bytes(good.read_bytes())
    assert weights.download_official("d2_tf") == cache_home / "d2_tf.pth"
    assert weights.resolve("d2_tf").sha256 == weights.file_sha256(good)


def test_http_error_is_one_weights_error_and_the_socket_timeout_is_restored(cache_home, local_server):
    before = socket.getdefaulttimeout()
    with pytest.raises(WeightsError, match="d2_ots.pth") as error:
        weights.download_official("d2_ots", timeout=5)  # not served: HTTP 404
    assert "\n" not in str(error.value)
    assert socket.getdefaulttimeout() == before
    assert not cache_home.exists() or not any(cache_home.iterdir())


def test_hed_conversion_transposes_hwio_to_oihw(tmp_path):
    source = weights.hed_h5_path()
    state = weights.convert_hed_h5(source)
    assert set(state) == OFFICIAL_KEYS
    with h5py.File(source, "r") as f:
        kernel = np.asarray(f["block1/layers/conv2d/vars/0"])  # (3, 3, 3, 64) HWIO
        bias = np.asarray(f["block4/layers/conv2d_2/vars/1"])
        kernel43 = np.asarray(f["block4/layers/conv2d_2/vars/0"])
    conv11 = state["dense_feature_extraction.model.0.weight"]
    assert conv11.shape == (64, 3, 3, 3)
    # weight[o, i, h, w] == kernel[h, w, i, o]
    assert conv11[5, 2, 0, 1].item() == pytest.approx(float(kernel[0, 1, 2, 5]))
    assert state["dense_feature_extraction.model.21.weight"][100, 7, 2, 0].item() == pytest.approx(
        float(kernel43[2, 0, 7, 100]))
    assert np.allclose(state["dense_feature_extraction.model.21.bias"].numpy(), bias)


def test_hed_weights_resolve_offline_and_are_cached(cache_home):
    info = weights.resolve("hed_vgg16")
    assert info.path == cache_home / "hed_vgg16.pth"
    assert set(torch.load(info.path, weights_only=True)["model"]) == OFFICIAL_KEYS
    assert weights.resolve("hed_vgg16").sha256 == info.sha256
