"""The anti-collapse recipe: a run with constant descriptors is stopped, a collapse after healthy
windows rolls back, and a tiny CPU run of the GPU command writes official-layout weights + card."""
import json

import pytest
import torch

from d2_sfm import train
from d2_sfm.model import D2Net
from d2_sfm.training.trainer import TrainConfig, Trainer, TrainingCollapsed
from d2_sfm.weights import expected_shapes, load_state_dict, save_checkpoint

pytest.importorskip("skimage")  # the training photos come from scikit-image

CONV4_3 = "dense_feature_extraction.model.21"


@pytest.fixture(scope="module")
def random_init(tmp_path_factory):
    torch.manual_seed(0)
    return str(save_checkpoint(D2Net().state_dict(), tmp_path_factory.mktemp("init") / "random.pth"))


@pytest.fixture(scope="module")
def constant_init(tmp_path_factory):
    """conv4_3 outputs the same 512-vector at every cell: spread (mean cosine) exactly 1."""
    torch.manual_seed(0)
    state = D2Net().state_dict()
    state[f"{CONV4_3}.weight"] = torch.zeros_like(state[f"{CONV4_3}.weight"])
    state[f"{CONV4_3}.bias"] = torch.rand_like(state[f"{CONV4_3}.bias"]) + 0.5
    return str(save_checkpoint(state, tmp_path_factory.mktemp("init") / "constant.pth"))


def tiny(output, init, steps, **options):
    settings = dict(train_layers="conv4_3", lr=1e-4, batch_size=1, crop_size=128, log_every=1,
                    validate_every=1000, checkpoint_every=1000, validation_data=None, data="rendered")
    return TrainConfig(output=str(output), init=init, steps=steps, **{**settings, **options})


def test_constant_descriptors_stop_the_run(tmp_path, constant_init):
    with pytest.raises(TrainingCollapsed, match="collapsed"):
        train.main(tiny(tmp_path / "run", constant_init, steps=6, collapse_patience=2))
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "collapsed" and log[-1]["step"] < 6
    assert all(e["spread"] > 0.99 for e in log if "loss" in e)
    assert not (tmp_path / "run" / "weights.pth").exists()


def test_collapse_after_healthy_windows_rolls_back_with_half_the_rate(tmp_path, random_init):
    trainer = Trainer(tiny(tmp_path / "run", random_init, steps=1, collapse_patience=2, max_rollbacks=1))
    trainer.output.mkdir(parents=True)
    healthy = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.watch_collapse([{"spread": 0.3}])
    with torch.no_grad():
        trainer.model.dense_feature_extraction.model[21].weight.zero_()
    trainer.watch_collapse([{"spread": 0.99}])  # one window: patience not yet reached
    assert trainer.rollbacks == 0
    trainer.watch_collapse([{"spread": 0.99}])
    assert trainer.rollbacks == 1
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-4)
    assert all(torch.equal(v, healthy[k]) for k, v in trainer.model.state_dict().items())
    trainer.watch_collapse([{"spread": 0.99}])
    with pytest.raises(TrainingCollapsed):  # rollbacks used up
        trainer.watch_collapse([{"spread": 0.99}])


def test_gpu_command_runs_on_cpu_and_writes_official_weights_and_card(tmp_path, random_init):
    output = tmp_path / "v2"
    code = train.cli(["--output", str(output), "--init", random_init, "--device", "cpu", "--steps", "20",
                      "--batch", "1", "--crop-size", "128", "--stage2-step", "19", "--stage2-layers", "conv4",
                      "--validation-data", "none", "--log-every", "1", "--workers", "0"])
    assert code == 0
    state = load_state_dict(output / "weights.pth")
    assert {k: tuple(v.shape) for k, v in state.items()} == expected_shapes()
    init = load_state_dict(random_init)
    assert not torch.equal(state["dense_feature_extraction.model.17.weight"].float(),  # stage 2 trained conv4_1
                           init["dense_feature_extraction.model.17.weight"].half().float())
    assert torch.equal(state["dense_feature_extraction.model.0.weight"].float(),  # conv1_1 frozen throughout
                       init["dense_feature_extraction.model.0.weight"].half().float())
    card = (output / "model_card.md").read_text()
    assert "seed | 1" in card and "CC0" in card and "stage2_step = 19" in card
    log = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    assert [e["stage"] for e in log if "loss" in e] == [1] * 19 + [2]
