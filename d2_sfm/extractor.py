"""The D2-Net feature-extractor adapter: image in, hloc-style features out."""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# The settings live in configs (no torch); ExtractionConfig and MULTISCALE_SCALES are re-exported.
from .configs import AUTO_PRECISION, DEFAULT_TILE_SIZE, MULTISCALE_SCALES, ExtractionConfig  # noqa: F401
from .errors import ConfigError
from .images import ResizedImage, read_image_checked, resize, resized_size
from .model import preprocess
from .pyramid import Keypoints, extract_keypoints
from .tiling import DenseNetwork
from .weights import load_model

logger = logging.getLogger(__name__)


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
