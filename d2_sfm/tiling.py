"""Running D2-Net on large images: exact tiled inference, and oneDNN's blocked layout on CPU.

Receptive field, in input pixels, of the dense-map cell p (stride 4; integer = pixel centre):
conv4_1..4_3 (3x3, dilation 2) reach 6 cells, pool3 (2x2, stride 1) one more cell after, conv3_x
3 more cells: pool2 cells p-9 .. p+10; conv2_x reach 2 half-resolution pixels and conv1_x 2 input
pixels, so cell p reads input pixels 4p-42 .. 4p+49 and nothing else.

A tile producing cells [p0, p1) therefore runs the network on the input rows (and columns)
4(p0-11) .. 4(p1+12), clipped to the image. The crop starts at a multiple of 4 so that both
2x2 max-pools keep their phase; every value a kept cell depends on is computed from real pixels,
and zero padding happens only at the true image borders, exactly as for the full image. The
stitched map equals the full-image map; on CPU with oneDNN it is even bit-identical in our tests,
but other back-ends may block convolutions of different sizes differently (float rounding only).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .model import feature_map_size

STRIDE = 4
HALO_BEFORE = 11  # cells of context above / left of a tile: 4 * 11 = 44 >= 42 px, a multiple of 4
HALO_AFTER = 12  # cells of context below / right of a tile: 4 * 12 = 48 >= 46 px (49 - 4 + 1)


@dataclass(frozen=True)
class Span:
    """One axis of a tile: output cells [first, stop) from input pixels [crop_start, crop_stop)."""
    first: int
    stop: int
    crop_start: int
    crop_stop: int

    @property
    def crop_offset(self) -> int:
        """Global index of the cell that is cell 0 of the crop's own dense map."""
        return self.crop_start // STRIDE


def split_cells(cells: int, tile_cells: int) -> list[tuple[int, int]]:
    """Split range(cells) into ceil(cells / tile_cells) ranges of nearly equal length."""
    count = max(1, -(-cells // max(tile_cells, 1)))
    edges = [k * cells // count for k in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


def spans(pixels: int, tile_size: int | None) -> list[Span]:
    """Tiles along one axis of `pixels` input pixels, each at most tile_size px plus the halo."""
    cells = feature_map_size(pixels, pixels)[0]
    if tile_size is None or cells <= tile_size // STRIDE:
        return [Span(0, cells, 0, pixels)]
    result = []
    for first, stop in split_cells(cells, tile_size // STRIDE):
        crop_start = STRIDE * max(first - HALO_BEFORE, 0)
        result.append(Span(first, stop, crop_start, min(STRIDE * (stop + HALO_AFTER), pixels)))
    return result


def dense_features_tiled(network: nn.Module, image: torch.Tensor, tile_size: int | None) -> torch.Tensor:
    """Dense map (1, C, H//4 - 1, W//4 - 1) of an image (1, 3, H, W), computed tile by tile.

    `tile_size` bounds the input pixels of a tile's own cells per axis (None: the whole image in
    one pass); each tile also reads up to 44 / 48 px of context on each side.
    """
    rows, cols = spans(image.shape[2], tile_size), spans(image.shape[3], tile_size)
    if len(rows) == 1 and len(cols) == 1:
        return network(image)
    output: torch.Tensor | None = None
    for row in rows:
        for col in cols:
            crop = image[:, :, row.crop_start:row.crop_stop, col.crop_start:col.crop_stop]
            tile = network(crop.contiguous())
            if output is None:
                height, width = feature_map_size(*image.shape[2:])
                output = tile.new_empty((1, tile.shape[1], height, width))
            output[:, :, row.first:row.stop, col.first:col.stop] = tile[
                :, :, row.first - row.crop_offset:row.stop - row.crop_offset,
                col.first - col.crop_offset:col.stop - col.crop_offset]
            del tile
    assert output is not None
    return output


def use_mkldnn(device: torch.device) -> bool:
    return device.type == "cpu" and torch.backends.mkldnn.is_available()


class DenseNetwork:
    """The dense-map function used for extraction: (1, 3, H, W) -> (1, C, H//4 - 1, W//4 - 1) float32.

    `precision` (resolved, see configs.PRECISIONS): fp32 on CPU keeps the activations in oneDNN's
    blocked layout between layers (no re-ordering at every convolution; same kernels, hence the
    same numbers as a plain call) and on CUDA disables TF32, so GPU output matches CPU fp32 as
    closely as the hardware allows; bf16 (CPU) and fp16 (CUDA) autocast with channels-last
    activations; tf32 allows TF32 convolutions on CUDA. Large images are processed in tiles of
    `tile_size` px (None: whole images, e.g. on GPUs). The weights are read from `model` at every
    call, so later `load_state_dict` calls on it take effect.
    """

    def __init__(self, model: nn.Module, tile_size: int | None = None, precision: str = "fp32") -> None:
        self.model = model
        self.tile_size = tile_size
        self.precision = precision
        if precision in ("bf16", "fp16"):
            # Channels-last weights feed the channels-last autocast kernels without a re-order at every
            # call (kermit 640 px on 2 cores: 0.58 -> 0.43 s, same values). The parameters are converted
            # in place, so a later load_state_dict still reaches them.
            model.to(memory_format=torch.channels_last)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return dense_features_tiled(self.forward, image, self.tile_size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            with torch.autocast(image.device.type, dtype=dtype):
                dense = self.model(image.contiguous(memory_format=torch.channels_last))
            return dense.float().contiguous()
        if image.is_cuda:
            with torch.backends.cudnn.flags(enabled=True, allow_tf32=self.precision == "tf32"):
                return self.model(image)
        if use_mkldnn(image.device) and image.dtype == torch.float32 and not torch.is_grad_enabled():
            return self.model(image.to_mkldnn()).to_dense()
        return self.model(image)
