"""Image headers: the format and size of an image file, read before decoding (JPEG, PNG, PNM, BMP,
TIFF and WebP parsed here), so that no image over the pixel limit is ever decoded; and the errors
every image reader raises."""
from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, D2SfmError

MAX_IMAGE_PIXELS = 100_000_000
"""Default limit on width x height (about 12k x 8k). Larger images are refused from their header,
before decoding: an 8-bit RGB image costs 3 bytes per pixel decoded and more while being converted,
and a tiny forged file can claim 50000 x 50000. Override with D2_SFM_MAX_IMAGE_PIXELS or the
`max_pixels` argument of `read_image`."""
MAX_PIXELS_ENV = "D2_SFM_MAX_IMAGE_PIXELS"
MAX_BYTES_PER_PIXEL = 16  # no supported encoding stores more (float32 RGBA TIFF, uncompressed)


class ImageError(D2SfmError, ValueError):
    """An image file that cannot be used; the message names the file and the problem."""


class ImageTooLargeError(ImageError):
    """An image whose header claims more pixels than the limit; it is never decoded."""


class ImageListingError(ImageError):
    """An image folder that cannot be listed at all (missing, unreadable, no usable image)."""



@dataclass(frozen=True)
class ImageHeader:
    format: str  # JPEG, PNG, PNM, BMP, TIFF or WebP
    width: int
    height: int


class HeaderProblem(ValueError):
    """Internal: a recognised format whose header is malformed or cut short."""


def max_image_pixels() -> int:
    """The pixel limit: D2_SFM_MAX_IMAGE_PIXELS if set, else MAX_IMAGE_PIXELS."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not text:
        return MAX_IMAGE_PIXELS
    if not text.isdigit() or int(text) <= 0:
        raise ConfigError(f"{MAX_PIXELS_ENV} must be a positive whole number of pixels, got {text!r}")
    return int(text)


def _u16(data: bytes, offset: int, order: str = ">") -> int:
    if offset + 2 > len(data):
        raise HeaderProblem("is truncated (ends inside its header)")
    return struct.unpack_from(order + "H", data, offset)[0]


def _u32(data: bytes, offset: int, order: str = ">") -> int:
    if offset + 4 > len(data):
        raise HeaderProblem("is truncated (ends inside its header)")
    return struct.unpack_from(order + "I", data, offset)[0]


JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_header(data: bytes) -> ImageHeader:
    """Walk the marker segments up to the first scan (SOS): the size is in the SOF segment, and a
    complete file has an EOI marker after that scan (a trailer after EOI, as some phones write, is
    fine; an EOI inside an EXIF thumbnail before the scan does not count)."""
    pos, size = 2, None
    while True:
        if pos + 2 > len(data):
            raise HeaderProblem("is truncated (ends inside its header)")
        if data[pos] != 0xFF:
            raise HeaderProblem(f"has a malformed header (no marker at byte {pos})")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers
            pos += 2
            continue
        if marker in (0xD8, 0xD9):
            raise HeaderProblem("has a malformed header (no image data before the end marker)")
        length = _u16(data, pos + 2)
        if length < 2:
            raise HeaderProblem(f"has a malformed header (segment length {length} at byte {pos})")
        if marker in JPEG_SOF:
            size = (_u16(data, pos + 7), _u16(data, pos + 5))
        if marker == 0xDA:
            break
        pos += 2 + length
    if size is None:
        raise HeaderProblem("has a malformed header (no frame header before the image data)")
    if data.find(b"\xff\xd9", pos) < 0:
        raise HeaderProblem("is truncated (no end marker)")
    return ImageHeader("JPEG", *size)


def png_header(data: bytes) -> ImageHeader:
    if data[12:16] != b"IHDR":
        raise HeaderProblem("is truncated (ends inside its header)" if len(data) < 16
                            else "has a malformed header (IHDR is not the first chunk)")
    if b"IEND" not in data[-64:]:
        raise HeaderProblem("is truncated (no end marker)")
    return ImageHeader("PNG", _u32(data, 16), _u32(data, 20))


def pnm_header(data: bytes) -> ImageHeader:
    """PBM/PGM/PPM (P1..P6), PFM (PF, Pf) and PAM (P7): ASCII fields with '#' comments."""
    head = data[:4096]
    if head[:2] == b"P7":
        fields = dict(line.split(None, 1) for line in head.split(b"\n")[1:]
                      if len(line.split(None, 1)) == 2 and not line.startswith(b"#"))
        try:
            return ImageHeader("PNM", int(fields[b"WIDTH"]), int(fields[b"HEIGHT"]))
        except (KeyError, ValueError):
            raise HeaderProblem("has a malformed PAM header (WIDTH/HEIGHT)") from None
    tokens = re.sub(rb"#[^\n]*", b" ", head[2:]).split()
    if len(tokens) < 2 or not (tokens[0].isdigit() and tokens[1].isdigit()):
        raise HeaderProblem("has a malformed header (width and height)")
    return ImageHeader("PNM", int(tokens[0]), int(tokens[1]))


def bmp_header(data: bytes) -> ImageHeader:
    info_size = _u32(data, 14, "<")
    if info_size == 12:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit sizes
        return ImageHeader("BMP", _u16(data, 18, "<"), _u16(data, 20, "<"))
    if info_size < 16 or len(data) < 26:
        raise HeaderProblem("is truncated (ends inside its header)" if len(data) < 26
                            else "has a malformed header")
    width, height = struct.unpack_from("<ii", data, 18)
    return ImageHeader("BMP", width, abs(height))  # negative height: rows stored top-down


def tiff_header(data: bytes) -> ImageHeader:
    """Width and height (tags 256, 257) of the first image (IFD0), classic TIFF or BigTIFF."""
    order = "<" if data[:2] == b"II" else ">"
    big = _u16(data, 2, order) == 43
    offset = struct.unpack_from(order + "Q", data, 8)[0] if big and len(data) >= 16 else _u32(data, 4, order)
    count_size, entry_size = (8, 20) if big else (2, 12)
    if offset + count_size > len(data):
        raise HeaderProblem("is truncated or malformed (first image directory out of the file)")
    count = struct.unpack_from(order + ("Q" if big else "H"), data, offset)[0]
    values = {}
    for index in range(min(count, 4096)):
        entry = offset + count_size + index * entry_size
        if entry + entry_size > len(data):
            raise HeaderProblem("is truncated (ends inside its image directory)")
        tag, kind = struct.unpack_from(order + "HH", data, entry)
        if tag in (256, 257):
            value_at = entry + (12 if big else 8)  # the value sits in the entry itself
            if kind == 3:  # SHORT
                values[tag] = _u16(data, value_at, order)
            elif kind == 16 and value_at + 8 <= len(data):  # LONG8 (BigTIFF)
                values[tag] = struct.unpack_from(order + "Q", data, value_at)[0]
            else:  # LONG
                values[tag] = _u32(data, value_at, order)
    if 256 not in values or 257 not in values:
        raise HeaderProblem("has a malformed header (no width or height tag)")
    return ImageHeader("TIFF", values[256], values[257])


def webp_header(data: bytes) -> ImageHeader:
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: 24-bit canvas width - 1 and height - 1
        if len(data) < 30:
            raise HeaderProblem("is truncated (ends inside its header)")
        return ImageHeader("WebP", int.from_bytes(data[24:27], "little") + 1,
                           int.from_bytes(data[27:30], "little") + 1)
    if chunk == b"VP8L":  # lossless: 14-bit width - 1 and height - 1 after the 0x2f signature
        if len(data) < 25 or data[20] != 0x2F:
            raise HeaderProblem("has a malformed lossless WebP header")
        bits = int.from_bytes(data[21:25], "little")
        return ImageHeader("WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8 ":  # lossy: a key frame's start code 9d 01 2a, then 14-bit sizes
        if len(data) < 30 or data[23:26] != b"\x9d\x01\x2a":
            raise HeaderProblem("has a malformed lossy WebP header")
        return ImageHeader("WebP", _u16(data, 26, "<") & 0x3FFF, _u16(data, 28, "<") & 0x3FFF)
    raise HeaderProblem("has a malformed WebP header (unknown first chunk)")


def image_header(data: bytes) -> ImageHeader | None:
    """Format and size from the first bytes, or None for a format not recognised. Raises
    HeaderProblem for a recognised format whose header is malformed or cut short."""
    if data.startswith(b"\xff\xd8"):
        return jpeg_header(data)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return png_header(data)
    if data[:1] == b"P" and data[1:2] in b"1234567fF" and len(data) > 2 and data[2:3].isspace():
        return pnm_header(data)
    if data.startswith(b"BM"):
        return bmp_header(data)
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return tiff_header(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return webp_header(data)
    return None


SIGNATURES = {".jpg": b"\xff\xd8", ".jpeg": b"\xff\xd8", ".png": b"\x89PNG\r\n\x1a\n"}


def container_problem(data: bytes, suffix: str) -> str | None:
    """Cheap checks OpenCV skips: a wrong signature, a malformed or cut-short header, or a missing
    end marker (truncated file). None if the container looks sound."""
    try:
        parse_container(data, suffix)
    except HeaderProblem as problem:
        return str(problem)
    return None


def parse_container(data: bytes, suffix: str) -> ImageHeader:
    """The header of an image file's bytes; raises HeaderProblem saying what is wrong."""
    if suffix in SIGNATURES and not data.startswith(SIGNATURES[suffix]):
        raise HeaderProblem(f"is not a {suffix[1:].upper()} file (wrong signature)")
    header = image_header(data)
    if header is None:
        raise HeaderProblem("is not a JPEG, PNG, PNM, BMP, TIFF or WebP file (unrecognised header)")
    return header


def check_header(path: Path, data: bytes, max_pixels: int) -> ImageHeader:
    """The header of an image read into `data`; raises ImageError (ImageTooLargeError over the
    limit) naming the file, so that a forged or huge image is refused without being decoded."""
    try:
        header = parse_container(data, path.suffix.lower())
    except HeaderProblem as problem:
        raise ImageError(f"image {path} {problem}") from None
    if header.width <= 0 or header.height <= 0:
        raise ImageError(f"image {path} claims an empty size {header.width} x {header.height}")
    if header.width * header.height > max_pixels:
        raise ImageTooLargeError(
            f"image {path} claims {header.width} x {header.height} pixels, over the limit of "
            f"{max_pixels} pixels (set {MAX_PIXELS_ENV} to allow larger images)")
    return header


def read_image_header(path: Path, max_pixels: int | None = None) -> ImageHeader:
    """Format and size of an image file from its header only, checked like `read_image` does."""
    path, max_pixels = Path(path), max_pixels or max_image_pixels()
    return check_header(path, read_image_bytes(path, max_pixels), max_pixels)


def read_image_bytes(path: Path, max_pixels: int) -> bytes:
    """The file's bytes; refuses files no image within the pixel limit could need (bounds memory)."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise ImageError(f"image {path} is not a regular file")
        limit = max_pixels * MAX_BYTES_PER_PIXEL + (64 << 20)
        if size > limit:
            raise ImageTooLargeError(f"image {path} is {size} bytes, more than any image within the "
                                     f"limit of {max_pixels} pixels needs (set {MAX_PIXELS_ENV})")
        data = path.read_bytes()
    except OSError as error:
        raise ImageError(f"cannot read image {path}: {error.strerror or error}") from error
    if not data:
        raise ImageError(f"image {path} is an empty file")
    return data

