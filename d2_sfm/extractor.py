"""The D2-Net feature-extractor adapter: image in, hloc-style features out."""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .detection import EDGE_THRESHOLD
from .errors import ConfigError, check_options
from .images import ResizedImage, read_image_checked, resize, resized_size
from .model import Preprocessing, preprocess
from .pyramid import Keypoints, extract_keypoints
from .tiling import DenseNetwork
from .weights import load_model

logger = logging.getLogger(__name__)

MULTISCALE_SCALES = (0.5, 1.0, 2.0)
# Tiles of at most this many input pixels per side (plus a 44-48 px halo): single scale up to
# 1600 px runs in one pass; multi-scale at 1600 px (3200 px at scale 2) stays under 4 GB.
DEFAULT_TILE_SIZE = 1600
PERFORMANCE_ONLY = ("tile_size",)  # options that do not change the features (not recorded)
# Network arithmetic. fp32: exact (TF32 off on GPUs). bf16: CPU autocast with channels-last
# activations, a faster network on CPUs with native bf16 (avx512_bf16 / AMX), but it kept only
# 96.4% of fp32 keypoints within 1 px on kermit at 640 px (94.2% multi-scale; measured with
# pipelines/benchmark_throughput.py --device cpu), below the 99% that `auto` requires, so auto
# means fp32 and bf16 is opt-in. fp16 (CUDA autocast) and tf32 (CUDA TF32 convolutions) are
# GPU-only. Detection, refinement and descriptor normalisation always run in fp32.
AUTO_PRECISION = "fp32"
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "tf32")


@dataclass(frozen=True)
class ExtractionConfig:
    multiscale: bool = False  # pyramid at scales 0.5, 1, 2 (official --multiscale)
    max_edge: int | None = 1600  # shrink so that the longer side is at most this (official)
    max_sum_edges: int | None = 2800  # then shrink until W + H is at most this (official)
    max_keypoints: int | None = None  # keep the K best-scoring keypoints (None: all)
    preprocessing: Preprocessing = "caffe"  # "caffe" for the official and HED weights
    use_relu: bool = True  # ReLU after conv4_3 (official default)
    edge_threshold: float = EDGE_THRESHOLD
    tile_size: int | None = DEFAULT_TILE_SIZE  # network tiles (input px per side); None: whole image
    precision: str = "auto"  # one of PRECISIONS; recorded resolved (a resume never mixes them)

    def __post_init__(self) -> None:
        if self.tile_size is not None and self.tile_size < 16:
            raise ConfigError(f"tile_size must be None or at least 16 px, got {self.tile_size}")
        check_options("extraction",
                      max_edge=self.max_edge is not None and not (self.max_edge == 0 or self.max_edge >= 16),
                      max_sum_edges=self.max_sum_edges is not None and not (self.max_sum_edges == 0
                                                                            or self.max_sum_edges >= 32),
                      max_keypoints=self.max_keypoints is not None and self.max_keypoints < 1)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @property
    def scales(self) -> tuple[float, ...]:
        return MULTISCALE_SCALES if self.multiscale else (1.0,)

    def as_attributes(self) -> dict[str, object]:
        """Flat settings for HDF5 attributes / summary.json (None -> 0); performance-only options,
        which leave the features unchanged, are left out."""
        return {k: (0 if v is None else v) for k, v in dataclasses.asdict(self).items()
                if k not in PERFORMANCE_ONLY}


@dataclass
class Features:
    """Features of one image in original pixels (x right, y down, integer = pixel centre)."""
    keypoints: np.ndarray  # (N, 2) float32 x, y
    scores: np.ndarray  # (N,) float32
    descriptors: np.ndarray  # (N, 512) float32, unit L2 norm
    scales: np.ndarray  # (N,) float32, 1 / pyramid scale
    image_size: tuple[int, int]  # (W, H) of the original image
    read_warnings: tuple[str, ...] = ()  # the decoder's corrupt-data warnings (half-garbage JPEG, ...)

    def __len__(self) -> int:
        return len(self.keypoints)


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device that exists here; a malformed name or a missing GPU is a ConfigError."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"device {str(device)!r} is not a torch device name (e.g. cpu, cuda, cuda:1): "
                          f"{str(error).splitlines()[0]}") from None
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"device {device} is not available here ({torch.cuda.device_count()} CUDA device(s)); "
                          "use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device} is not supported: use cpu or cuda")
    return device


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), where bf16 pays off."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_precision(precision: str, device: torch.device) -> str:
    """The arithmetic `precision` means on `device` (auto: AUTO_PRECISION); GPU-only modes are
    refused on a CPU, and bf16 on a CPU without native bf16 is allowed with a warning (slow)."""
    if precision == "auto":
        return AUTO_PRECISION
    if precision in ("fp16", "tf32") and device.type != "cuda":
        raise ConfigError(f"precision {precision} needs a CUDA device (got {device}); use fp32 or bf16")
    if precision == "bf16" and device.type == "cpu" and not native_bf16():
        logger.warning("This CPU has no native bf16 (avx512_bf16 or AMX): bf16 is emulated and slower than fp32")
    return precision


def top_k(keypoints: Keypoints, k: int | None) -> Keypoints:
    if k is None or len(keypoints.scores) <= k:
        return keypoints
    order = torch.topk(keypoints.scores, k).indices.sort().values  # keep the original order
    return Keypoints(keypoints.xy[order], keypoints.scores[order], keypoints.descriptors[order],
                     keypoints.scales[order])


class D2Extractor:
    """Loads D2-Net once and extracts features from arrays or files."""

    def __init__(self, weights: str | os.PathLike | None = None,
                 config: ExtractionConfig = ExtractionConfig(), device: str | torch.device = "cpu"):
        self.device = resolve_device(device)
        self.config = dataclasses.replace(config, precision=resolve_precision(config.precision, self.device))
        self.model, self.weights = load_model(weights, use_relu=config.use_relu, device=self.device)
        tile_size = config.tile_size if self.device.type == "cpu" or config.tile_size != DEFAULT_TILE_SIZE else None
        self.network = DenseNetwork(self.model, tile_size, self.config.precision)  # reads the weights live

    @torch.inference_mode()
    def extract_network_input(self, image_rgb: np.ndarray) -> Keypoints:
        """Features of an RGB uint8 (h, w, 3) image exactly as given (no resizing)."""
        tensor = torch.from_numpy(np.ascontiguousarray(image_rgb)).to(self.device)
        tensor = tensor.permute(2, 0, 1)[None].float()  # (1, 3, h, w) in 0..255
        keypoints = extract_keypoints(self.network, preprocess(tensor, self.config.preprocessing),
                                      self.config.scales, self.config.edge_threshold)
        return top_k(keypoints, self.config.max_keypoints)

    def extract_array(self, image_rgb: np.ndarray) -> Features:
        """Features of an RGB uint8 image (H, W, 3), resized by the config's rules."""
        height, width = image_rgb.shape[:2]
        size = resized_size(width, height, self.config.max_edge, self.config.max_sum_edges)
        resized = ResizedImage(resize(image_rgb, size), (width, height))
        keypoints = self.extract_network_input(resized.image)
        return Features(
            keypoints=resized.to_original(keypoints.xy.cpu().numpy()),
            scores=keypoints.scores.cpu().numpy().astype(np.float32),
            descriptors=keypoints.descriptors.cpu().numpy().astype(np.float32),
            scales=keypoints.scales.cpu().numpy().astype(np.float32),
            image_size=(width, height),
        )

    def extract_path(self, path: Path) -> Features:
        """Features of an image file; the decoder's warnings travel with them."""
        image, warnings = read_image_checked(path)
        return dataclasses.replace(self.extract_array(image), read_warnings=tuple(warnings))
