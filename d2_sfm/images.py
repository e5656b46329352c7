"""Reading images robustly and resizing them by the official D2-Net rules.

Pixel convention everywhere in d2_sfm's HDF5 files: x right, y down, integer = pixel centre
(the centre of the top-left pixel is (0, 0)), as in the official D2-Net and hloc. COLMAP puts the
centre of the top-left pixel at (0.5, 0.5); the +0.5 is added only when writing to pycolmap.

No image can crash, hang or exhaust memory: `list_images_report` skips (with a reason) names that
cannot go into pairs files, dangling or looping links, FIFOs and unreadable folders; `read_image`
reads the size from the header (JPEG, PNG, PNM, BMP, TIFF, WebP parsed here) and refuses images
over `max_image_pixels()` before decoding; `read_image_checked` also returns the decoder's
corrupt-data warnings (libjpeg decodes half-garbage JPEGs with only a line on stderr).
"""
from __future__ import annotations

import errno
import logging
import os
import re
import stat
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .image_headers import (MAX_IMAGE_PIXELS, MAX_PIXELS_ENV, ImageError, ImageHeader, ImageListingError,
                            ImageTooLargeError, check_header, max_image_pixels, read_image_bytes, read_image_header)
from .paths import check_pair_key_collisions, control_character, name_problem, safe_relative_name
from .textfiles import read_text_lines

logger = logging.getLogger(__name__)

__all__ = [  # the image layer: this module and the header reader it builds on
    "IMAGE_EXTENSIONS", "MAX_IMAGE_PIXELS", "MAX_PIXELS_ENV", "ImageError", "ImageHeader", "ImageListing",
    "ImageListingError", "ImageTooLargeError", "ResizedImage", "check_header", "decode_capturing_warnings",
    "list_images", "list_images_report", "max_image_pixels", "read_image", "read_image_bytes",
    "read_image_checked", "read_image_header", "relative_name", "resize", "resized_size", "to_rgb_uint8",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".bmp", ".webp")


# ---------------------------------------------------------------------------------------------
# Listing an image folder


@dataclass
class ImageListing:
    """What `list_images_report` found: usable names, and files or folders skipped with a reason."""
    root: Path
    names: list[str]
    skipped: dict[str, str] = field(default_factory=dict)  # relative path -> reason

    def log(self) -> None:
        for name, reason in self.skipped.items():
            logger.warning("Skipped %s in %s: %s", name, self.root, reason)


def list_images_report(root: Path) -> ImageListing:
    """Image files below `root` (recursive), as sorted POSIX paths relative to it, plus what was
    skipped and why. Raises ImageListingError if `root` is not a readable folder or nothing usable
    is found, and NameCollisionError for names that collide in hloc's matches files.

    Decisions (one odd file must not stop a run, but must not pass silently either):
    - Files whose name cannot go into a pairs or HDF5 file unchanged (whitespace, control
      characters, backslash, leading '#', not UTF-8; see `paths.name_problem`) are skipped.
    - Symlinked image files are used when they resolve to a regular file; dangling or looping
      links, and anything that is not a regular file (a FIFO named x.jpg would block), are skipped.
    - Symlinked folders are followed, each real folder at most once: a link back to an ancestor
      (a loop) or to a folder already listed under another name is skipped, so no image is listed
      twice. Real folders are visited before symlinked ones at each level.
    - Unreadable sub-folders are skipped (an unreadable root is an error).
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageListingError(f"image folder {root} does not exist or is not a folder")
    if not os.access(root, os.R_OK | os.X_OK):
        raise ImageListingError(f"image folder {root} is not readable")
    listing = ImageListing(root, [])
    seen: dict[tuple[int, int], str] = {}  # (device, inode) of each folder walked -> its name

    def on_error(error: OSError) -> None:
        listing.skipped[relative_name(root, error.filename or root) + "/"] = \
            f"cannot read the folder: {error.strerror or error}"

    for folder, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=True):
        here = relative_name(root, folder)
        try:
            info = os.stat(folder)
        except OSError as error:
            listing.skipped[here + "/"] = f"cannot read the folder: {error.strerror or error}"
            dirnames.clear()
            continue
        key = (info.st_dev, info.st_ino)
        if key in seen:
            listing.skipped[here + "/"] = (f"symbolic link to a folder already listed as "
                                           f"{seen[key] or '.'}/ (a loop or a duplicate), not followed")
            dirnames.clear()
            continue
        seen[key] = "" if here == "." else here
        dirnames.sort(key=lambda d: (os.path.islink(os.path.join(folder, d)), d))
        for filename in sorted(filenames):
            name = filename if here == "." else f"{here}/{filename}"
            if os.path.splitext(filename)[1].lower() not in IMAGE_EXTENSIONS:
                path = os.path.join(folder, filename)
                if os.path.islink(path) and not os.path.exists(path):  # maybe a folder of images
                    listing.skipped[printable(name)] = file_problem(path) or "dangling symbolic link"
                continue
            problem = file_problem(os.path.join(folder, filename)) or name_problem(name)
            if problem:
                listing.skipped[printable(name)] = problem
            else:
                listing.names.append(name)
    listing.names.sort()
    if not listing.names:
        skipped = f" ({len(listing.skipped)} skipped: see the warnings above)" if listing.skipped else ""
        listing.log()
        raise ImageListingError(f"image folder {root} contains no images "
                                f"({', '.join(IMAGE_EXTENSIONS)}){skipped}")
    check_pair_key_collisions(listing.names, f"image folder {root}")
    return listing


def list_images(root: Path) -> list[str]:
    """The usable image names of `list_images_report`; logs one warning per skipped file."""
    listing = list_images_report(root)
    listing.log()
    return listing.names


def relative_name(root: Path, path: os.PathLike | str) -> str:
    return printable(Path(os.path.relpath(path, root)).as_posix())


def printable(name: str) -> str:
    """A name safe to print on one line: control characters and undecodable bytes escaped."""
    if control_character(name) is None:
        try:
            name.encode("utf-8")
            return name
        except UnicodeEncodeError:
            pass
    return ascii(name)[1:-1]


def file_problem(path: str) -> str | None:
    """Why the directory entry `path` is not a usable image file (links followed), or None."""
    try:
        info = os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop"
        if os.path.islink(path):
            return f"dangling symbolic link (to {printable(os.readlink(path))})"
        return f"cannot read: {error.strerror or error}"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    return None



# ---------------------------------------------------------------------------------------------
# Decoding, with the decoders' warnings captured

# libjpeg prints these warnings (its JWRN_* messages) to stderr and still returns an image, part of
# which may be grey or garbage. libpng prints "libpng warning: ..." lines; those about colour
# profiles and text chunks are harmless and are passed through to stderr unchanged.
DECODER_WARNING = re.compile(
    r"^(Corrupt JPEG data|Premature end of JPEG file|Invalid SOS parameters|Inconsistent progression"
    r"|Unknown Adobe color transform|Warning: unknown JFIF|Application transferred too many scanlines"
    r"|libpng (warning|error): (?!(iCCP|sRGB|cHRM|gAMA|bKGD|pHYs|tIME|tEXt|zTXt|iTXt)\b))")
_STDERR_LOCK = threading.Lock()


def decode_capturing_warnings(data: bytes, flags: int) -> tuple[np.ndarray | None, list[str]]:
    """cv2.imdecode with file descriptor 2 redirected to a temporary file, since libjpeg and libpng
    write their warnings there directly (C stdio, invisible to Python). Lines that are decoder
    warnings are returned; anything else written meanwhile (another thread's logging) is written
    back to stderr. A lock serialises the redirection (and so the decoding) between threads; the
    decode is a small part of an extraction, so the cost is small."""
    buffer = np.frombuffer(data, np.uint8)
    with _STDERR_LOCK:
        try:
            if sys.stderr is not None:
                sys.stderr.flush()
            sink = tempfile.TemporaryFile()
        except (OSError, ValueError):  # no usable stderr or temp folder: decode without capturing
            return cv2.imdecode(buffer, flags), []
        with sink:
            try:
                saved = os.dup(2)
            except OSError:  # file descriptor 2 is closed
                return cv2.imdecode(buffer, flags), []
            try:
                os.dup2(sink.fileno(), 2)
                try:
                    image = cv2.imdecode(buffer, flags)
                finally:
                    os.dup2(saved, 2)
            finally:
                os.close(saved)
            sink.seek(0)
            captured = sink.read().decode("utf-8", "replace")
    warnings = [line.strip() for line in captured.splitlines() if DECODER_WARNING.match(line.strip())]
    others = "".join(line for line in captured.splitlines(keepends=True)
                     if not DECODER_WARNING.match(line.strip()))
    if others:
        os.write(2, others.encode("utf-8", "replace"))
    return image, warnings


def read_image_checked(path: Path, apply_exif_orientation: bool = False, *,
                       max_pixels: int | None = None) -> tuple[np.ndarray, list[str]]:
    """`read_image`, plus the decoder's warnings about corrupt data (e.g. "Corrupt JPEG data:
    premature end of data segment") instead of logging them: an image is returned, but part of it
    may be garbage, so callers count these (the extract summary does) rather than pass them silently.

    Raises ImageError naming the file for unreadable, empty, truncated or undecodable files, and
    ImageTooLargeError when the header claims more than `max_pixels` (default: max_image_pixels()).
    """
    path = Path(path)
    max_pixels = max_pixels or max_image_pixels()
    return decode_image_bytes(path, read_image_bytes(path, max_pixels), apply_exif_orientation, max_pixels=max_pixels)


def decode_image_bytes(path: Path, data: bytes, apply_exif_orientation: bool = False, *,
                       max_pixels: int | None = None) -> tuple[np.ndarray, list[str]]:
    """`read_image_checked` on a file's bytes already read (e.g. sent to a Ray worker); `path`
    only names the file in errors."""
    max_pixels = max_pixels or max_image_pixels()
    header = check_header(path, data, max_pixels)
    # IMREAD_COLOR makes grey and RGBA 3-channel BGR; ANYDEPTH keeps 16-bit for exact scaling.
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_COLOR
    if not apply_exif_orientation:
        flags |= cv2.IMREAD_IGNORE_ORIENTATION
    image, warnings = decode_capturing_warnings(data, flags)
    if image is None or image.size == 0:
        detail = f" ({'; '.join(warnings)})" if warnings else ""
        raise ImageError(f"image {path} is corrupt or not an image format OpenCV can decode{detail}")
    if image.shape[0] * image.shape[1] > max_pixels:  # a header we misread; never seen, but bounded
        raise ImageTooLargeError(f"image {path} decoded to {image.shape[1]} x {image.shape[0]} pixels "
                                 f"(header: {header.width} x {header.height}), over the limit of "
                                 f"{max_pixels} pixels")
    return to_rgb_uint8(image, path), warnings


def read_image(path: Path, apply_exif_orientation: bool = False, *,
               max_pixels: int | None = None) -> np.ndarray:
    """Read any supported image as RGB uint8 (H, W, 3); raises ImageError naming the file.

    Greyscale is repeated to 3 channels, alpha is dropped, 16-bit is scaled to 8-bit.
    EXIF orientation is ignored by default, like COLMAP and hloc, so that keypoints refer to the
    stored pixel grid that COLMAP sees; set `apply_exif_orientation` to rotate first.
    Images over `max_pixels` (default: D2_SFM_MAX_IMAGE_PIXELS or MAX_IMAGE_PIXELS) are refused
    from their header with ImageTooLargeError. Decoder warnings about corrupt data are logged as
    one warning naming the file; use `read_image_checked` to get them instead.
    """
    image, warnings = read_image_checked(path, apply_exif_orientation, max_pixels=max_pixels)
    if warnings:
        logger.warning("Image %s has corrupt data (decoded anyway, may be partly garbage): %s",
                       path, "; ".join(warnings))
    return image


def to_rgb_uint8(image: np.ndarray, path: Path | str = "<array>") -> np.ndarray:
    """OpenCV-decoded array (grey, BGR, BGRA; uint8/uint16/float) -> RGB uint8 (H, W, 3)."""
    if image.dtype == np.uint16:  # round(x / 257) without a float64 copy of a large image
        image = cv2.convertScaleAbs(image, alpha=1 / 257)
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


def read_image_list(path: Path) -> list[str]:
    """Image names, one per line (blank lines and '#' comments ignored), relative to the image folder.
    A name that could not be written to pairs or HDF5 files unchanged is refused with its line."""
    names: list[str] = []
    for number, line in read_text_lines(path, "image list"):
        where = f"{path}:{number}"
        name = safe_relative_name(line, where)
        problem = name_problem(name)
        if problem:
            raise ImageError(f"{where}: image name {name!r} cannot be used: {problem}")
        if name in names:
            logger.warning("%s: %s is listed again; extracted once", where, name)
            continue
        names.append(name)
    if not names:
        raise ImageError(f"image list {path} names no images")
    check_pair_key_collisions(names, str(path))
    return names
