"""The extract step: hloc HDF5 schema, resume, atomic writes, bad images, image formats."""
import os
import subprocess
import sys

import cv2
import h5py
import numpy as np
import pytest
from skimage import data as skdata

from d2_sfm import extract
from d2_sfm.extractor import ExtractionConfig
from d2_sfm.h5io import list_h5_names, read_features
from d2_sfm.images import ImageError, read_image, resized_size

CONFIG = ExtractionConfig(max_edge=240)


@pytest.fixture(scope="module")
def photo():
    return cv2.resize(skdata.astronaut(), (240, 180), interpolation=cv2.INTER_AREA)  # RGB


@pytest.fixture
def image_dir(tmp_path, photo):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    cv2.imwrite(str(root / "a.jpg"), photo[:, :, ::-1])
    cv2.imwrite(str(root / "sub" / "b.png"), np.ascontiguousarray(photo[::-1, :, ::-1]))
    return root


@pytest.fixture(scope="module")
def extractor(hed_extractor_factory):
    return hed_extractor_factory(max_edge=240)


def test_hloc_schema_with_nested_names(image_dir, tmp_path, extractor):
    output = tmp_path / "features.h5"
    summary = extract.main(image_dir, output, extractor=extractor)
    assert sorted(summary.extracted) == ["a.jpg", "sub/b.png"]
    assert list_h5_names(output) == ["a.jpg", "sub/b.png"]
    with h5py.File(output, "r") as f:
        assert isinstance(f["sub"], h5py.Group) and "b.png" in f["sub"]
        group = f["a.jpg"]
        n = group["keypoints"].shape[0]
        assert n > 50
        assert group["keypoints"].dtype == np.float32 and group["keypoints"].shape == (n, 2)
        assert group["descriptors"].shape == (512, n) and group["descriptors"].dtype == np.float32
        assert group["scores"].shape == (n,)
        assert group["image_size"][()].tolist() == [240, 180]
        assert group["keypoints"].attrs["uncertainty"] == 1.0
        assert f.attrs["weights"] == "hed_vgg16" and len(f.attrs["weights_sha256"]) == 64
        assert f.attrs["config.max_edge"] == 240
    features = read_features(output, "a.jpg")
    assert np.allclose(np.linalg.norm(features["descriptors"], axis=1), 1, atol=1e-5)
    assert (features["keypoints"] >= -0.5).all() and (features["keypoints"][:, 0] < 240).all()


def test_resume_skips_done_images_and_partial_files_are_reused(image_dir, tmp_path, extractor):
    output = tmp_path / "features.h5"
    extract.main(image_dir, output, image_list=["a.jpg"], extractor=extractor)
    summary = extract.main(image_dir, output, extractor=extractor)
    assert summary.extracted == ["sub/b.png"] and summary.skipped_existing == ["a.jpg"]
    assert not output.with_name("features.h5.partial").exists()


def test_crash_mid_run_leaves_the_previous_file_intact(image_dir, tmp_path, extractor, monkeypatch):
    output = tmp_path / "features.h5"
    extract.main(image_dir, output, image_list=["a.jpg"], extractor=extractor)
    before = output.read_bytes()
    calls = []

    def crash(path):
        calls.append(path)
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(extractor, "extract_path", crash)
    with pytest.raises(RuntimeError):
        extract.main(image_dir, output, extractor=extractor)
    assert output.read_bytes() == before and list_h5_names(output) == ["a.jpg"]


def test_ctrl_c_commits_finished_images(image_dir, tmp_path, extractor, monkeypatch):
    output = tmp_path / "features.h5"
    original = extractor.extract_path
    seen = []

    def interrupt_second(path):
        seen.append(path)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return original(path)

    monkeypatch.setattr(extractor, "extract_path", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        extract.main(image_dir, output, extractor=extractor)
    assert list_h5_names(output) == ["a.jpg"]


def test_killed_process_resumes_from_partial(image_dir, tmp_path):
    """A SIGKILL after the first image: the next run keeps it and extracts only the rest."""
    output = tmp_path / "features.h5"
    script = f"""
import os, signal
from d2_sfm import extract, h5io
original = h5io.write_features
def write_then_die(handle, name, *a, **k):
    original(handle, name, *a, **k)
    os.kill(os.getpid(), signal.SIGKILL)
extract.write_features = write_then_die
extract.main({str(image_dir)!r}, {str(output)!r}, weights="hed_vgg16",
             config=extract.ExtractionConfig(max_edge=240))
"""
    result = subprocess.run([sys.executable, "-c", script], env={**os.environ, "D2_SFM_OFFLINE": "1"})
    assert result.returncode != 0 and not output.exists()
    assert output.with_name("features.h5.partial").exists()
    summary = extract.main(image_dir, output, weights="hed_vgg16", config=CONFIG)
    assert summary.skipped_existing == ["a.jpg"] and summary.extracted == ["sub/b.png"]


def test_bad_images_are_reported_and_skipped(image_dir, tmp_path, extractor):
    good = (image_dir / "a.jpg").read_bytes()
    (image_dir / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (image_dir / "empty.png").write_bytes(b"")
    (image_dir / "text.jpg").write_text("not an image")
    corrupt = bytearray(good)
    corrupt[200:2000] = b"\x00" * 1800
    (image_dir / "corrupt.jpg").write_bytes(bytes(corrupt[:300]) + good[-2:])
    summary = extract.main(image_dir, tmp_path / "f.h5", extractor=extractor)
    assert sorted(summary.extracted) == ["a.jpg", "sub/b.png"]
    assert set(summary.failed) == {"truncated.jpg", "empty.png", "text.jpg", "corrupt.jpg"}
    assert "truncated" in summary.failed["truncated.jpg"] and "empty" in summary.failed["empty.png"]
    assert all(str(image_dir) in reason for reason in summary.failed.values())


def test_an_image_that_became_unreadable_loses_its_old_features(image_dir, tmp_path, extractor):
    """No stale result: the features of its earlier content leave the file, counted as a failure."""
    output = tmp_path / "f.h5"
    extract.main(image_dir, output, extractor=extractor)
    assert "sub/b.png" in list_h5_names(output)
    (image_dir / "sub" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    summary = extract.main(image_dir, output, extractor=extractor)
    assert list(summary.failed) == ["sub/b.png"] and summary.skipped_existing == ["a.jpg"]
    assert list_h5_names(output) == ["a.jpg"]


def test_cli_reports_errors_in_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run([sys.executable, "-m", "d2_sfm.extract", "--images", str(empty), "--output",
                             str(tmp_path / "f.h5")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "contains no images" in result.stderr and "Traceback" not in result.stderr


def test_cli_and_main_agree(image_dir, tmp_path, extractor):
    extract.main(image_dir, tmp_path / "api.h5", image_list=["a.jpg"], extractor=extractor)
    list_file = tmp_path / "list.txt"
    list_file.write_text("# one image\na.jpg\n")
    assert extract.cli(["--images", str(image_dir), "--output", str(tmp_path / "cli.h5"),
                        "--image-list", str(list_file), "--max-edge", "240", "--weights", "hed_vgg16"]) == 0
    api, cli = read_features(tmp_path / "api.h5", "a.jpg"), read_features(tmp_path / "cli.h5", "a.jpg")
    assert np.array_equal(api["keypoints"], cli["keypoints"])
    defaults = extract.build_parser().parse_args(["--images", "x", "--output", "y"])
    assert (defaults.max_edge, defaults.max_sum_edges) == (ExtractionConfig().max_edge, ExtractionConfig().max_sum_edges)


def test_image_list_names_cannot_escape(tmp_path):
    list_file = tmp_path / "list.txt"
    list_file.write_text("a.jpg\n../../etc/passwd\n")
    with pytest.raises(Exception, match="list.txt:2"):
        extract.read_image_list(list_file)


def test_resume_with_other_settings_is_refused(image_dir, tmp_path, extractor, hed_extractor_factory):
    output = tmp_path / "f.h5"
    extract.main(image_dir, output, image_list=["a.jpg"], extractor=extractor)
    with pytest.raises(Exception, match="other settings.*max_edge=240"):
        extract.main(image_dir, output, extractor=hed_extractor_factory(max_edge=200))


def test_top_k_and_half_descriptors(image_dir, tmp_path, hed_extractor_factory):
    output = tmp_path / "f.h5"
    extract.main(image_dir, output, image_list=["a.jpg"], half_descriptors=True,
                 extractor=hed_extractor_factory(max_edge=240, max_keypoints=50))
    with h5py.File(output, "r") as f:
        assert f["a.jpg/keypoints"].shape == (50, 2) and f["a.jpg/descriptors"].dtype == np.float16


def test_keypoints_are_in_original_pixels(photo, extractor, hed_extractor_factory):
    """The same photo at 2x size, shrunk back by max_edge, gives the keypoints scaled by 2."""
    small = extractor.extract_array(photo)
    big = cv2.resize(photo, (480, 360), interpolation=cv2.INTER_CUBIC)
    from_big = extractor.extract_array(big)  # resized to 240 x 180 internally
    assert from_big.image_size == (480, 360)
    expected = (small.keypoints + 0.5) * 2 - 0.5
    distances = np.linalg.norm(from_big.keypoints[:, None] - expected[None], axis=2).min(axis=1)
    assert np.median(distances) < 0.5


def test_resize_rules_match_the_official_cli():
    assert resized_size(3072, 2048, 1600, 2800) == (1600, 1067)
    assert resized_size(1600, 1600, 1600, 2800) == (1400, 1400)
    assert resized_size(640, 480, 1600, 2800) == (640, 480)
    assert resized_size(640, 480, None, None) == (640, 480)


def test_multiscale_runs_and_blank_images_do_not_crash(photo, hed_extractor_factory):
    multiscale = hed_extractor_factory(max_edge=240, multiscale=True)
    features = multiscale.extract_array(photo)
    assert set(np.unique(features.scales)) <= {0.5, 1.0, 2.0} and len(np.unique(features.scales)) >= 2
    for height, width in [(7, 9), (16, 16), (21, 30)]:  # levels with empty or 1-cell maps
        tiny = multiscale.extract_array(np.full((height, width, 3), 128, np.uint8))
        assert tiny.descriptors.shape == (len(tiny), 512)
    single = hed_extractor_factory(max_edge=240)
    assert len(single.extract_array(np.zeros((7, 9, 3), np.uint8))) == 0  # below the 8 px minimum


@pytest.mark.parametrize("kind", ["grey_pgm", "rgba_png", "16bit_png", "tiff", "ppm"])
def test_image_formats_read_as_rgb_uint8(tmp_path, photo, kind):
    bgr = np.ascontiguousarray(photo[:, :, ::-1])
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    path, array = {
        "grey_pgm": (tmp_path / "g.pgm", grey),
        "rgba_png": (tmp_path / "a.png", cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)),
        "16bit_png": (tmp_path / "d.png", bgr.astype(np.uint16) * 257),
        "tiff": (tmp_path / "t.tif", bgr),
        "ppm": (tmp_path / "p.ppm", bgr),
    }[kind]
    assert cv2.imwrite(str(path), array)
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (180, 240, 3)
    expected = np.repeat(grey[:, :, None], 3, 2) if kind == "grey_pgm" else photo
    assert np.abs(image.astype(int) - expected).max() <= 1


def exif_jpeg(bgr, orientation):
    """A JPEG with an EXIF APP1 segment holding only the Orientation tag."""
    ok, encoded = cv2.imencode(".jpg", bgr)
    tiff = (b"MM\x00\x2a\x00\x00\x00\x08" + b"\x00\x01" + b"\x01\x12\x00\x03\x00\x00\x00\x01"
            + orientation.to_bytes(2, "big") + b"\x00\x00" + b"\x00\x00\x00\x00")
    app1 = b"Exif\x00\x00" + tiff
    segment = b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1
    data = encoded.tobytes()
    return data[:2] + segment + data[2:]


def test_exif_orientation_is_ignored_by_default_and_applied_on_request(tmp_path, photo):
    path = tmp_path / "rotated.jpg"
    path.write_bytes(exif_jpeg(np.ascontiguousarray(photo[:, :, ::-1]), orientation=6))  # 90 deg CW
    assert read_image(path).shape == (180, 240, 3)  # stored grid, as COLMAP and hloc see it
    assert read_image(path, apply_exif_orientation=True).shape == (240, 180, 3)


def test_missing_image_error_names_the_file(tmp_path):
    with pytest.raises(ImageError, match="nope.jpg"):
        read_image(tmp_path / "nope.jpg")
