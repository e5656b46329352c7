"""D2-Net's test-time network: VGG16 up to conv4_3, made denser (Dusmanu et al., CVPR 2019).

The module layout and parameter names equal the official checkpoints, so
`D2Net().load_state_dict(torch.load(f, weights_only=True)["model"])` works on d2_tf.pth & co:
keys are `dense_feature_extraction.model.{0,2,5,7,10,12,14,17,19,21}.{weight,bias}`.

Differences from plain VGG16 (as in the official `model_test.py`): pool3 is a 2x2 *stride-1*
average pool and conv4_x use dilation 2, which keeps VGG's receptive field at stride 4 instead
of 8. Output: (B, 512, H//4 - 1, W//4 - 1) for an input of (B, 3, H, W).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configs import Preprocessing

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)

# Indices of the conv layers inside the Sequential: the official state-dict keys.
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21)
STATE_DICT_PREFIX = "dense_feature_extraction.model."


def conv(in_channels: int, out_channels: int, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation)


def vgg16_conv4_3_dense() -> nn.Sequential:
    """The layers of the official test net, written out (index = state-dict key)."""
    return nn.Sequential(
        conv(3, 64), nn.ReLU(inplace=True),  # 0 conv1_1
        conv(64, 64), nn.ReLU(inplace=True),  # 2 conv1_2
        nn.MaxPool2d(2, stride=2),  # 4 pool1
        conv(64, 128), nn.ReLU(inplace=True),  # 5 conv2_1
        conv(128, 128), nn.ReLU(inplace=True),  # 7 conv2_2
        nn.MaxPool2d(2, stride=2),  # 9 pool2
        conv(128, 256), nn.ReLU(inplace=True),  # 10 conv3_1
        conv(256, 256), nn.ReLU(inplace=True),  # 12 conv3_2
        conv(256, 256), nn.ReLU(inplace=True),  # 14 conv3_3
        nn.AvgPool2d(2, stride=1),  # 16 pool3: stride 1 keeps the resolution at stride 4
        conv(256, 512, dilation=2), nn.ReLU(inplace=True),  # 17 conv4_1
        conv(512, 512, dilation=2), nn.ReLU(inplace=True),  # 19 conv4_2
        conv(512, 512, dilation=2),  # 21 conv4_3 (ReLU applied in forward, as officially)
    )


class DenseFeatureExtraction(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = vgg16_conv4_3_dense()


class D2Net(nn.Module):
    """Dense D2-Net features. Input: preprocessed image (B, 3, H, W); see `preprocess`."""

    def __init__(self, use_relu: bool = True) -> None:
        super().__init__()
        self.dense_feature_extraction = DenseFeatureExtraction()
        self.use_relu = use_relu

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 512, H//4 - 1, W//4 - 1)."""
        dense = self.dense_feature_extraction.model(image)
        return F.relu(dense) if self.use_relu else dense


def preprocess(image: torch.Tensor, mode: Preprocessing = "caffe") -> torch.Tensor:
    """RGB image (B, 3, H, W), float in 0..255 -> network input.

    caffe (the official weights' convention): RGB->BGR, minus the BGR mean, no scaling.
    torch: /255, then ImageNet mean/std in RGB order.
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"expected an RGB batch (B, 3, H, W), got shape {tuple(image.shape)}")
    if mode == "caffe":
        mean = image.new_tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
        return image.flip(1) - mean
    if mode == "torch":
        mean = image.new_tensor(TORCH_MEAN_RGB).view(1, 3, 1, 1)
        std = image.new_tensor(TORCH_STD_RGB).view(1, 3, 1, 1)
        return (image / 255.0 - mean) / std
    raise ValueError(f"unknown preprocessing {mode!r}: expected 'caffe' or 'torch'")


def feature_map_size(height: int, width: int) -> tuple[int, int]:
    """Size of the dense map for an input of height x width (stride 4, minus the avg-pool row)."""
    return height // 4 - 1, width // 4 - 1
