"""D2-Net's train-time network (official `lib/model.py`): plain VGG16 up to conv4_3, stride 8.

It differs from the test net (`d2_sfm.model`) only in pool3 (2x2 max pool, stride 2, instead of
the stride-1 average pool) and in conv4_x (dilation 1 instead of 2): the parameters are the same,
so state dicts are interchangeable (d2-net#86) and this module reuses the test net's layer list.
Feature cell p (row or column) has its receptive-field centre at pixel 8p + 3.5 (integer = pixel
centre): three 2x2 stride-2 pools, each p -> 2p + 0.5.
"""
from __future__ import annotations

import torch
from torch import nn

from ..model import CONV_INDICES, D2Net, DenseFeatureExtraction
from .config import TRAIN_LAYERS

POOL3_INDEX = 16
CONV4_INDICES = (17, 19, 21)
FEATURE_STRIDE = 8
CELL_OFFSET = 3.5  # pixel = 8 * cell + 3.5

# Which conv layers (state-dict indices) each --train-layers choice unfreezes.
TRAINABLE_LAYERS = dict(zip(TRAIN_LAYERS, ((21,), CONV4_INDICES, (10, 12, 14) + CONV4_INDICES, CONV_INDICES)))


def cell_to_pixel(cells: torch.Tensor) -> torch.Tensor:
    """Feature cells (any shape, (i, j) or (x, y)) -> pixel positions of the train net's input."""
    return FEATURE_STRIDE * cells + CELL_OFFSET


def pixel_to_cell(pixels: torch.Tensor) -> torch.Tensor:
    """Inverse of `cell_to_pixel` (float cells; round for the nearest cell)."""
    return (pixels - CELL_OFFSET) / FEATURE_STRIDE


class D2NetTrain(nn.Module):
    """Train-time D2-Net: preprocessed images (B, 3, H, W) -> raw conv4_3 (B, 512, H//8, W//8).

    No ReLU at the end: soft detection applies it, and the loss uses the raw map's descriptors
    (as officially). Its state dict has the official keys `dense_feature_extraction.model.<idx>.*`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dense_feature_extraction = DenseFeatureExtraction()
        layers = self.dense_feature_extraction.model
        layers[POOL3_INDEX] = nn.MaxPool2d(2, stride=2)
        for index in CONV4_INDICES:
            layers[index].dilation = (1, 1)
            layers[index].padding = (1, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.dense_feature_extraction.model(image)

    def set_trainable(self, layers: str) -> list[nn.Parameter]:
        """Freeze every conv except those of `layers` (a TRAINABLE_LAYERS key); returns the trainable params."""
        if layers not in TRAINABLE_LAYERS:
            raise ValueError(f"unknown train layers {layers!r}: expected one of {', '.join(TRAINABLE_LAYERS)}")
        trainable = TRAINABLE_LAYERS[layers]
        params = []
        for index in CONV_INDICES:
            for param in self.dense_feature_extraction.model[index].parameters():
                param.requires_grad_(index in trainable)
                if index in trainable:
                    params.append(param)
        return params


def to_test_net(train_net: D2NetTrain, use_relu: bool = True) -> D2Net:
    """The test-time net with the same weights (a copy)."""
    net = D2Net(use_relu=use_relu)
    net.load_state_dict({k: v.detach().clone() for k, v in train_net.state_dict().items()}, strict=True)
    return net
