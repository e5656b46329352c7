"""Short CPU training runs: resume equals an uninterrupted run; checkpoints load everywhere."""
import json

import cv2
import numpy as np
import pytest
import torch

from d2_sfm import train
from d2_sfm.model import D2Net
from d2_sfm.training.trainer import TrainConfig, Trainer
from d2_sfm.weights import load_model, load_state_dict, save_checkpoint

pytest.importorskip("skimage")  # synthetic pairs use scikit-image's bundled photos


@pytest.fixture(scope="module")
def init_weights(tmp_path_factory):
    torch.manual_seed(0)
    return str(save_checkpoint(D2Net().state_dict(), tmp_path_factory.mktemp("init") / "random.pth"))


def tiny_config(output, init, steps, **options):
    settings = dict(train_layers="conv4_3", lr=1e-4, batch_size=2, crop_size=128, log_every=1,
                    validate_every=100, checkpoint_every=100, validation_data=None)
    return TrainConfig(output=str(output), init=init, steps=steps, **{**settings, **options})


def test_resumed_run_equals_an_uninterrupted_one(tmp_path, init_weights):
    straight = train.main(tiny_config(tmp_path / "a", init_weights, steps=2))
    train.main(tiny_config(tmp_path / "b", init_weights, steps=1))
    resumed = train.main(tiny_config(tmp_path / "b", init_weights, steps=2), resume=True)
    a, b = load_state_dict(straight), load_state_dict(resumed)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not torch.equal(a["dense_feature_extraction.model.21.weight"],
                           load_state_dict(init_weights)["dense_feature_extraction.model.21.weight"])
    assert torch.equal(a["dense_feature_extraction.model.0.weight"],  # frozen layer unchanged
                       load_state_dict(init_weights)["dense_feature_extraction.model.0.weight"])
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2]
    assert all(np.isfinite(e["loss"]) and -1 <= e["spread"] <= 1 and e["keypoints"] >= 0 for e in log)
    model, _ = load_model(resumed)  # the official layout: usable as --weights
    assert isinstance(model, D2Net)


def test_validation_on_held_out_homography_pairs_keeps_the_best(tmp_path, init_weights):
    data = tmp_path / "homography" / "hpatches_v_graffiti"
    data.mkdir(parents=True)
    image = cv2.GaussianBlur((np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8), (0, 0), 2)
    cv2.imwrite(str(data / "1.ppm"), image)
    cv2.imwrite(str(data / "3.ppm"), np.roll(image, 8, axis=1))
    np.savetxt(data / "H_1_3", np.array([[1, 0, 8], [0, 1, 0], [0, 0, 1.0]]))
    config = tiny_config(tmp_path / "run", init_weights, steps=1, validation_data=str(tmp_path / "homography"))
    trainer = Trainer(config)
    assert [p.name for p in trainer.validation] == ["graffiti 1-3"]
    trainer.run()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    validations = [e for e in log if "val_mma3" in e]
    assert [e["step"] for e in validations] == [0, 1]
    assert (tmp_path / "run" / "best.pth").is_file()


def test_cli_defaults_equal_the_api_defaults():
    args = train.build_parser().parse_args(["--output", "x"])
    parsed = train.config_from_args(args)
    assert parsed == TrainConfig(output="x")
