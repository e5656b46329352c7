"""The train-time network shares the test net's parameters and has stride 8."""
import pytest
import torch

from d2_sfm.model import D2Net
from d2_sfm.training.network import D2NetTrain, to_test_net


def test_same_state_dict_keys_and_stride_8():
    net = D2NetTrain()
    assert net.state_dict().keys() == D2Net().state_dict().keys()
    assert net(torch.zeros(1, 3, 64, 96)).shape == (1, 512, 8, 12)
    assert net.dense_feature_extraction.model[21].dilation == (1, 1)


def test_weights_are_interchangeable_with_the_test_net():
    torch.manual_seed(0)
    train = D2NetTrain()
    test = to_test_net(train)
    for key, value in train.state_dict().items():
        assert torch.equal(test.state_dict()[key], value)
    assert test(torch.zeros(1, 3, 64, 64)).shape == (1, 512, 15, 15)  # test net: stride 4


def test_set_trainable_freezes_the_other_layers():
    net = D2NetTrain()
    params = net.set_trainable("conv4")
    assert len(params) == 6
    assert [i for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21)
            if net.dense_feature_extraction.model[i].weight.requires_grad] == [17, 19, 21]
    with pytest.raises(ValueError, match="unknown train layers"):
        net.set_trainable("conv5")
