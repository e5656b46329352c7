"""Reading images robustly and resizing them by the official D2-Net rules.

Pixel convention everywhere in d2_sfm's HDF5 files: x right, y down, integer = pixel centre
(the centre of the top-left pixel is (0, 0)), as in the official D2-Net and hloc. COLMAP puts the
centre of the top-left pixel at (0.5, 0.5); the +0.5 is added only when writing to pycolmap.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import D2SfmError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".bmp", ".webp")


class ImageError(D2SfmError, ValueError):
    """An image file that cannot be used; the message names the file and the problem."""


def list_images(root: Path) -> list[str]:
    """Image files below `root` (recursive), as sorted POSIX paths relative to it."""
    root = Path(root)
    if not root.is_dir():
        raise ImageError(f"image folder {root} does not exist or is not a folder")
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not names:
        raise ImageError(f"image folder {root} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
    return names


SIGNATURES = {".jpg": b"\xff\xd8", ".jpeg": b"\xff\xd8", ".png": b"\x89PNG\r\n\x1a\n"}
END_MARKERS = {".jpg": b"\xff\xd9", ".jpeg": b"\xff\xd9", ".png": b"IEND"}


def container_problem(data: bytes, suffix: str) -> str | None:
    """Cheap checks OpenCV skips: a wrong signature, or a missing end marker (truncated file)."""
    if suffix in SIGNATURES and not data.startswith(SIGNATURES[suffix]):
        return f"is not a {suffix[1:].upper()} file (wrong signature)"
    if suffix in END_MARKERS and END_MARKERS[suffix] not in data[-64:]:
        return "is truncated (no end marker)"
    return None


def read_image(path: Path, apply_exif_orientation: bool = False) -> np.ndarray:
    """Read any supported image as RGB uint8 (H, W, 3); raises ImageError naming the file.

    Greyscale is repeated to 3 channels, alpha is dropped, 16-bit is scaled to 8-bit.
    EXIF orientation is ignored by default, like COLMAP and hloc, so that keypoints refer to the
    stored pixel grid that COLMAP sees; set `apply_exif_orientation` to rotate first.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageError(f"cannot read image {path}: {error.strerror or error}") from error
    if not data:
        raise ImageError(f"image {path} is an empty file")
    problem = container_problem(data, path.suffix.lower())
    if problem:
        raise ImageError(f"image {path} {problem}")
    # IMREAD_COLOR makes grey and RGBA 3-channel BGR; ANYDEPTH keeps 16-bit for exact scaling.
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_COLOR
    if not apply_exif_orientation:
        flags |= cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None or image.size == 0:
        raise ImageError(f"image {path} is corrupt or not an image format OpenCV can decode")
    return to_rgb_uint8(image, path)


def to_rgb_uint8(image: np.ndarray, path: Path | str = "<array>") -> np.ndarray:
    """OpenCV-decoded array (grey, BGR, BGRA; uint8/uint16/float) -> RGB uint8 (H, W, 3)."""
    if image.dtype == np.uint16:
        image = (image / 257.0).round().astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageError(f"image {path} has an unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    raise ImageError(f"image {path} has an unsupported shape {image.shape}")


def resized_size(width: int, height: int, max_edge: int | None, max_sum_edges: int | None) -> tuple[int, int]:
    """Official D2-Net rule: shrink to max_edge, then shrink until W + H <= max_sum_edges."""
    scale = 1.0
    if max_edge and max(width, height) * scale > max_edge:
        scale = max_edge / max(width, height)
    if max_sum_edges and (width + height) * scale > max_sum_edges:
        scale = max_sum_edges / (width + height)
    if scale == 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize(image: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Area interpolation when shrinking (as hloc's cv2_area), linear when enlarging."""
    width, height = size_wh
    if (width, height) == (image.shape[1], image.shape[0]):
        return image
    shrink = width < image.shape[1] and height < image.shape[0]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


@dataclass(frozen=True)
class ResizedImage:
    image: np.ndarray  # (h, w, 3) RGB uint8, what the network sees
    original_size: tuple[int, int]  # (W, H)

    def to_original(self, keypoints_xy: np.ndarray) -> np.ndarray:
        """Keypoints (N, 2) in the resized image -> original pixels (integer = pixel centre)."""
        height, width = self.image.shape[:2]
        scale = np.array([self.original_size[0] / width, self.original_size[1] / height], np.float32)
        return ((keypoints_xy + 0.5) * scale - 0.5).astype(np.float32)
