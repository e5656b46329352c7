"""Image headers are checked before decoding, and half-garbage images are reported, not silent."""
import logging
import struct
import zlib

import cv2
import numpy as np
import pytest

from d2_sfm.errors import ConfigError

from d2_sfm import images
from d2_sfm.images import (ImageError, ImageTooLargeError, read_image, read_image_checked,
                           read_image_header)


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def forged_png(width: int, height: int, idat_bytes: int = 4096) -> bytes:
    """A PNG whose IHDR claims width x height but whose data is a few kilobytes of zeros."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * idat_bytes)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_bytes(width=240, height=180) -> bytes:
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), (5, 5), 0)
    ok, encoded = cv2.imencode(".jpg", image)
    assert ok
    return encoded.tobytes()


def test_forged_png_claiming_50000_squared_is_refused_from_its_header(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(forged_png(50000, 50000, idat_bytes=2_400_000))
    with pytest.raises(ImageTooLargeError, match=r"bomb\.png claims 50000 x 50000"):
        read_image(path)
    with pytest.raises(ImageTooLargeError):
        read_image_checked(path)


def forged_headers() -> dict[str, bytes]:
    """Header-only files of every supported format claiming 60000 x 60000 pixels."""
    side = 60000
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, side, side, 1) + b"\x01\x11\x00"
    jpeg = b"\xff\xd8" + sof + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + b"\x00" * 64 + b"\xff\xd9"
    tiff_be = (b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 2)
               + struct.pack(">HHII", 256, 4, 1, side) + struct.pack(">HHII", 257, 4, 1, side)
               + b"\0\0\0\0")
    bmp = b"BM" + b"\0" * 12 + struct.pack("<Iii", 40, side, -side) + b"\0" * 40
    webp = b"RIFF" + struct.pack("<I", 30) + b"WEBPVP8X" + struct.pack("<I", 10) + b"\0" * 4 \
        + (side - 1).to_bytes(3, "little") + (side - 1).to_bytes(3, "little")
    return {"huge.jpg": jpeg, "huge.tif": tiff_be, "huge.bmp": bmp, "huge.webp": webp,
            "huge.ppm": b"P6\n# a comment\n60000 60000\n255\n" + b"\0" * 64,
            "huge.pgm": b"P5 60000\n60000 255\n" + b"\0" * 64}


@pytest.mark.parametrize("name", sorted(forged_headers()))
def test_every_format_is_size_checked_before_decoding(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(forged_headers()[name])
    with pytest.raises(ImageTooLargeError, match=rf"{name} claims 60000 x 60000"):
        read_image(path)


@pytest.mark.parametrize("suffix,params", [(".jpg", []), (".png", []), (".ppm", []), (".pgm", []),
                                           (".pbm", []), (".tif", []), (".bmp", []),
                                           (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),
                                           (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101])])
def test_header_sizes_agree_with_opencv(tmp_path, suffix, params):
    image = np.random.default_rng(1).integers(0, 255, (23, 37, 3), dtype=np.uint8)
    if suffix in (".pgm", ".pbm"):
        image = image[:, :, 0]
    path = tmp_path / f"x{suffix}"
    assert cv2.imwrite(str(path), image, params)
    header = read_image_header(path)
    assert (header.width, header.height) == (37, 23)
    assert read_image(path).shape == (23, 37, 3)


def test_pixel_limit_is_configurable(tmp_path, monkeypatch):
    path = tmp_path / "photo.jpg"
    path.write_bytes(jpeg_bytes(240, 180))
    assert read_image(path).shape == (180, 240, 3)
    with pytest.raises(ImageTooLargeError, match="photo.jpg claims 240 x 180"):
        read_image(path, max_pixels=240 * 180 - 1)
    monkeypatch.setenv(images.MAX_PIXELS_ENV, "1000")
    with pytest.raises(ImageTooLargeError, match=images.MAX_PIXELS_ENV):
        read_image(path)
    assert read_image(path, max_pixels=240 * 180).shape == (180, 240, 3)
    monkeypatch.setenv(images.MAX_PIXELS_ENV, "lots")
    with pytest.raises(ConfigError, match=images.MAX_PIXELS_ENV):  # a setting, not one image's problem
        read_image(path)


@pytest.mark.parametrize("name,data", [
    ("zero.png", forged_png(0, 10)),
    ("zero.ppm", b"P6\n0 10\n255\n" + b"\0" * 30),
    ("negative.bmp", b"BM" + b"\0" * 12 + struct.pack("<Iii", 40, -5, 5) + b"\0" * 40),
])
def test_zero_or_negative_sizes_are_refused(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ImageError, match=rf"{name} claims an empty size"):
        read_image(path)


def test_unrecognised_or_truncated_headers_are_refused(tmp_path):
    (tmp_path / "riff.webp").write_bytes(b"RIFF\0\0\0\0WEBPXXXX")
    (tmp_path / "cut.png").write_bytes(forged_png(10, 10)[:20])
    (tmp_path / "cut.tif").write_bytes(b"II*\x00\xff\x00\x00\x00")
    (tmp_path / "words.bmp").write_bytes(b"hello, this is not an image at all")
    for name in ("riff.webp", "cut.png", "cut.tif", "words.bmp"):
        with pytest.raises(ImageError, match=name):
            read_image(tmp_path / name)


def test_truncated_jpeg_is_refused_and_a_trailer_after_the_end_is_fine(tmp_path):
    data = jpeg_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cut.jpg is truncated"):
        read_image(tmp_path / "cut.jpg")
    (tmp_path / "trailer.jpg").write_bytes(data + b"phone maker metadata" * 10)
    image, warnings = read_image_checked(tmp_path / "trailer.jpg")
    assert image.shape == (180, 240, 3) and warnings == []


def test_end_marker_of_an_exif_thumbnail_does_not_hide_a_truncated_image(tmp_path):
    data = jpeg_bytes()
    thumbnail = b"Exif\0\0" + b"\xff\xd8 tiny thumbnail \xff\xd9"
    app1 = b"\xff\xe1" + struct.pack(">H", len(thumbnail) + 2) + thumbnail
    with_thumbnail = data[:2] + app1 + data[2:]
    (tmp_path / "thumb.jpg").write_bytes(with_thumbnail[: len(with_thumbnail) // 2])
    with pytest.raises(ImageError, match="thumb.jpg is truncated"):
        read_image(tmp_path / "thumb.jpg")


@pytest.mark.parametrize("kind", ["cut_with_end_marker", "garbage_marker_in_scan", "extraneous_bytes"])
def test_half_garbage_jpegs_are_decoded_with_a_named_warning(tmp_path, caplog, kind):
    data = jpeg_bytes()
    scan = data.find(b"\xff\xda")
    bad = {
        "cut_with_end_marker": data[: len(data) // 2] + b"\xff\xd9",
        "garbage_marker_in_scan": data[: scan + 2000] + b"\xff\xd3garbage\xff\xd5" + data[scan + 2000:],
        "extraneous_bytes": data[:-2] + b"junk" + b"\xff\xd9",
    }[kind]
    path = tmp_path / f"{kind}.jpg"
    path.write_bytes(bad)
    image, warnings = read_image_checked(path)
    assert image.shape == (180, 240, 3)
    assert warnings and all("Corrupt JPEG data" in w or "Premature end" in w for w in warnings)
    with caplog.at_level(logging.WARNING, logger="d2_sfm.images"):
        assert read_image(path).shape == (180, 240, 3)
    assert f"{kind}.jpg" in caplog.text and "corrupt" in caplog.text.lower()


def test_clean_images_have_no_warnings_and_other_stderr_output_is_kept(tmp_path, capfd):
    path = tmp_path / "clean.jpg"
    path.write_bytes(jpeg_bytes())
    image, warnings = read_image_checked(path)
    assert warnings == [] and image.shape == (180, 240, 3)
    bad = tmp_path / "bad.jpg"
    data = jpeg_bytes()
    bad.write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    read_image_checked(bad)
    assert "Corrupt JPEG data" not in capfd.readouterr().err  # captured, not printed raw


def test_sixteen_bit_scaling_is_exact_rounding(tmp_path):
    values = np.arange(0, 65536, 7, dtype=np.uint16)[:9000].reshape(60, 150)
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), values)
    image = read_image(path)
    assert np.array_equal(image[:, :, 0], np.round(values / 257.0).astype(np.uint8))
