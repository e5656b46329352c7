"""Text lists are read strictly: one error line naming the file (and line) for anything odd."""
import os

import pytest

from d2_sfm.errors import D2SfmError
from d2_sfm.textfiles import TextFileError, read_text_lines


def test_lines_numbers_comments_bom_and_crlf(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes("\ufeff# header\r\na.jpg\r\n\r\n  sub/b.jpg  \r\n#c.jpg\ncaf\u00e9.jpg".encode())
    assert read_text_lines(path, "image list") == [(2, "a.jpg"), (4, "sub/b.jpg"), (6, "caf\u00e9.jpg")]


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes(b"a.jpg\nb.jpg\ncaf\xe9.jpg\n")  # Latin-1
    with pytest.raises(TextFileError, match=r"list\.txt:3: image list is not valid UTF-8") as error:
        read_text_lines(path, "image list")
    assert isinstance(error.value, D2SfmError) and "\n" not in str(error.value)


@pytest.mark.parametrize("data", ["a.jpg\nb.jpg\n".encode("utf-16"), b"a.jpg\x00\x00b.jpg"])
def test_binary_or_utf16_files_are_refused(tmp_path, data):
    path = tmp_path / "list.txt"
    path.write_bytes(data)
    with pytest.raises(TextFileError, match=r"list\.txt:1"):
        read_text_lines(path, "pairs file")


def test_missing_folder_fifo_and_oversized_files(tmp_path):
    with pytest.raises(TextFileError, match="cannot read pairs file .*nope.txt"):
        read_text_lines(tmp_path / "nope.txt", "pairs file")
    with pytest.raises(TextFileError, match="folder"):
        read_text_lines(tmp_path, "pairs file")
    os.mkfifo(tmp_path / "fifo.txt")
    with pytest.raises(TextFileError, match="not a regular file"):
        read_text_lines(tmp_path / "fifo.txt", "pairs file")
    big = tmp_path / "big.txt"
    big.write_text("a.jpg\n" * 100)
    with pytest.raises(TextFileError, match="big.txt.*limit"):
        read_text_lines(big, "image list", max_bytes=100)


def test_unicode_line_separators_stay_inside_the_line(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("a\u2028b.jpg\nc\x0cd.jpg\n", encoding="utf-8")
    assert read_text_lines(path, "image list") == [(1, "a\u2028b.jpg"), (2, "c\x0cd.jpg")]
