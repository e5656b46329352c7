"""Task bodies run by Ray workers for `extract` and `match` (the driver imports this lazily).

Each worker process builds its extractor once (a per-process cache keyed by weights and settings)
from weights bytes sent by the driver, written to the worker's own temp folder; images arrive as
the file's bytes and are decoded with images.py's checks and decoder, exactly as local extraction.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..extractor import D2Extractor, ExtractionConfig, Features
from ..fingerprint import file_sha256
from ..images import ImageError, decode_image_bytes
from ..matching import MatcherConfig, match_descriptors
from ..weights import WeightsError, WeightsInfo


@dataclass(frozen=True)
class ExtractorSpec:
    """What a worker needs to rebuild the driver's extractor: the weights' identity and settings."""
    weights: WeightsInfo  # the driver's path is not used by workers, only name and sha256
    config: ExtractionConfig  # precision already resolved by the driver
    device: str  # torch device on the worker ("cuda" when Ray assigns it a GPU)


@dataclass(frozen=True)
class ImageJob:
    name: str
    path_text: str  # the image's path on the driver, only to name it in messages
    stamp: str  # FileStamp text taken on the driver before reading (returned with the result)
    data: bytes  # the file's bytes, read on the driver
    max_pixels: int  # the driver's D2_SFM_MAX_IMAGE_PIXELS limit


@dataclass(frozen=True)
class ImageResult:
    name: str
    stamp: str
    features: Features | None  # None when the image could not be decoded
    failure: str | None = None  # why (the ImageError's message)


_EXTRACTORS: dict[tuple[str, ExtractionConfig, str], D2Extractor] = {}


def weights_file(sha256: str, weights_box: list[Any]) -> Path:
    """The checkpoint in this machine's temp folder, named by its hash; fetched from the object
    store (weights_box[0]: an ObjectRef to the file's bytes) unless a file there already has that
    hash. The folder is this user's alone, and a cached file is hashed again before it is trusted:
    a file planted or damaged under that name is replaced, never loaded."""
    folder = Path(tempfile.gettempdir()) / f"d2_sfm_ray_weights-{os.getuid()}"
    path = folder / f"{sha256}.pth"
    if path.is_file() and file_sha256(path) == sha256:
        return path
    import ray  # noqa: PLC0415  (only ever imported inside a Ray worker)

    data = ray.get(weights_box[0])
    if hashlib.sha256(data).hexdigest() != sha256:
        raise WeightsError(f"weights sent to the Ray worker do not have sha256 {sha256} (corrupted in transit)")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_uid != os.getuid():
        raise WeightsError(f"{folder} belongs to another user: not used for checkpoints")
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)  # atomic: concurrent workers on one machine never read a half file
    return path


def worker_extractor(spec: ExtractorSpec, weights_box: list[Any]) -> D2Extractor:
    """This worker process's extractor for `spec`, built on first use (one model per worker)."""
    key = (spec.weights.sha256, spec.config, spec.device)
    if key not in _EXTRACTORS:
        _EXTRACTORS.clear()
        _EXTRACTORS[key] = D2Extractor(weights_file(spec.weights.sha256, weights_box), spec.config, spec.device)
    return _EXTRACTORS[key]


def extract_image(spec: ExtractorSpec, weights_box: list[Any], job: ImageJob) -> ImageResult:
    """Ray task: features of one image sent as bytes (an undecodable image is a failure result)."""
    extractor = worker_extractor(spec, weights_box)
    try:
        image, warnings = decode_image_bytes(Path(job.path_text), job.data, max_pixels=job.max_pixels)
    except ImageError as error:
        return ImageResult(job.name, job.stamp, None, str(error))
    features = dataclasses.replace(extractor.extract_array(image), read_warnings=tuple(warnings))
    return ImageResult(job.name, job.stamp, features)


def match_shard(number: int, config: MatcherConfig, device: str, pairs: list[tuple[int, int]],
                *descriptors: np.ndarray) -> tuple[int, list[tuple[np.ndarray, np.ndarray]]]:
    """Ray task: shard `number` and the (matches0, scores0) of each of its pairs (i, j), rows into
    `descriptors`, each (N, D) float32 as the driver's DescriptorCache holds them."""
    tensors = [torch.from_numpy(np.array(d, np.float32)).to(device) for d in descriptors]  # writable copies
    results = []
    for i, j in pairs:
        matches0, scores0 = match_descriptors(tensors[i], tensors[j], config)
        results.append((matches0.cpu().numpy(), scores0.cpu().numpy()))
    return number, results
