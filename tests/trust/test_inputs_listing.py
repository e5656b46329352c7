"""Listing an image folder: odd names, collisions, symlinks and unreadable folders are reported."""
import logging
import os

import pytest

from d2_sfm.images import ImageListingError, list_images, list_images_report
from d2_sfm.paths import (NameCollisionError, UnsafePathError, check_pair_key_collisions, name_problem,
                          safe_relative_name)

PIXEL = b"P6\n1 1\n255\n\x80\x80\x80"  # a valid 1x1 PPM: listing never decodes, reading works


def touch(path, data=PIXEL):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_pair_key_collision_is_refused_naming_both(tmp_path):
    touch(tmp_path / "sub" / "k.ppm")
    touch(tmp_path / "sub-k.ppm")
    with pytest.raises(NameCollisionError) as error:
        list_images(tmp_path)
    assert "sub/k.ppm" in str(error.value) and "sub-k.ppm" in str(error.value)
    check_pair_key_collisions(["a/b.jpg", "a-c.jpg", "b.jpg"], "list")  # distinct keys: fine


@pytest.mark.parametrize("name", ["a b.ppm", "new\nline.ppm", "carriage\r.ppm", "tab\t.ppm",
                                  "back\\slash.ppm", "#hash.ppm", " leading.ppm", "trailing .ppm",
                                  "nbsp\u00a0.ppm", "sep\u2028.ppm"])
def test_names_that_break_pairs_files_are_skipped_with_a_reason(tmp_path, caplog, name):
    touch(tmp_path / "good.ppm")
    touch(tmp_path / name)
    report = list_images_report(tmp_path)
    assert report.names == ["good.ppm"]
    assert len(report.skipped) == 1 and "\n" not in next(iter(report.skipped))
    with caplog.at_level(logging.WARNING, logger="d2_sfm.images"):
        assert list_images(tmp_path) == ["good.ppm"]
    assert "Skipped" in caplog.text and len(caplog.records) == 1


def test_name_in_a_subfolder_with_a_space_is_skipped(tmp_path):
    touch(tmp_path / "my photos" / "a.ppm")
    touch(tmp_path / "b.ppm")
    report = list_images_report(tmp_path)
    assert report.names == ["b.ppm"] and "my photos/a.ppm" in report.skipped


def test_undecodable_file_name_is_skipped(tmp_path):
    touch(tmp_path / "good.ppm")
    with open(os.path.join(os.fsencode(tmp_path), b"bad\xff.ppm"), "wb") as handle:
        handle.write(PIXEL)
    report = list_images_report(tmp_path)
    assert report.names == ["good.ppm"]
    assert [name for name in report.skipped] == ["bad\\udcff.ppm"]
    assert "UTF-8" in report.skipped["bad\\udcff.ppm"]


def test_symlinks_dangling_looping_and_resolving(tmp_path):
    root = tmp_path / "images"
    touch(root / "real.ppm")
    os.symlink("missing.ppm", root / "dangling.ppm")
    os.symlink("loop.ppm", root / "loop.ppm")
    os.symlink("real.ppm", root / "alias.ppm")
    report = list_images_report(root)
    assert report.names == ["alias.ppm", "real.ppm"]
    assert "dangling" in report.skipped["dangling.ppm"] and "loop" in report.skipped["loop.ppm"]


def test_symlinked_folders_are_followed_once_without_looping(tmp_path):
    root = tmp_path / "images"
    touch(root / "sub" / "a.ppm")
    touch(tmp_path / "elsewhere" / "e.ppm")
    os.symlink(root, root / "sub" / "back")  # a loop to the root
    os.symlink(root / "sub", root / "zz_alias")  # the same folder under another name
    os.symlink(tmp_path / "elsewhere", root / "linked")  # a data folder kept elsewhere
    os.symlink(tmp_path / "nothing", root / "broken_dir")  # a dangling folder link
    report = list_images_report(root)
    assert report.names == ["linked/e.ppm", "sub/a.ppm"]
    assert "sub/back/" in report.skipped and "zz_alias/" in report.skipped
    assert "dangling" in report.skipped["broken_dir"]


def test_fifo_named_like_an_image_is_skipped_not_read(tmp_path):
    touch(tmp_path / "good.ppm")
    os.mkfifo(tmp_path / "pipe.jpg")
    report = list_images_report(tmp_path)
    assert report.names == ["good.ppm"] and "not a regular file" in report.skipped["pipe.jpg"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders whatever their permissions")
def test_unreadable_subfolder_is_reported(tmp_path):
    touch(tmp_path / "good.ppm")
    locked = tmp_path / "locked"
    touch(locked / "x.ppm")
    locked.chmod(0)
    try:
        report = list_images_report(tmp_path)
    finally:
        locked.chmod(0o755)
    assert report.names == ["good.ppm"] and "locked/" in report.skipped


def test_nothing_usable_is_one_error_with_the_count(tmp_path):
    touch(tmp_path / "a b.ppm")
    with pytest.raises(ImageListingError, match="contains no images.*1 skipped"):
        list_images(tmp_path)
    with pytest.raises(ImageListingError, match="does not exist"):
        list_images(tmp_path / "missing")


@pytest.mark.parametrize("name", ["a\0b.jpg", "a\nb.jpg", "x\x1b.jpg", "p\u2029.jpg"])
def test_safe_relative_name_refuses_control_characters(name):
    with pytest.raises(UnsafePathError, match="control character"):
        safe_relative_name(name, "list.txt:3")


def test_name_problem_accepts_ordinary_names():
    for name in ("a.jpg", "sub/dir/IMG_0001.JPG", "caf\u00e9/\u5199\u771f.png", "a-b_c.d.jpg"):
        assert name_problem(name) is None
