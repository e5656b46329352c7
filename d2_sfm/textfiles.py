"""Reading user-given text lists (image lists, pairs files, query lists) strictly, with one clear
error line naming the file and line.

Why strict: a list in another encoding (Latin-1, UTF-16) decoded leniently yields names that match
no file or, worse, other files; a binary file passed by mistake would yield garbage names. So the
file must be UTF-8 (a leading BOM is accepted), hold no NUL byte, and be at most `MAX_TEXT_BYTES`
(a list of a million image names is about 50 MB; anything near a gigabyte is not a list).
Lines end in LF or CRLF only: other characters Python's `splitlines` would split on (form feed,
U+2028, ...) stay inside the line and are refused by the name checks of `d2_sfm.paths`.
"""
from __future__ import annotations

import stat
from pathlib import Path

from .errors import D2SfmError

MAX_TEXT_BYTES = 1 << 30


class TextFileError(D2SfmError, ValueError):
    """A text list that cannot be read: missing, not a file, too large, or not UTF-8 text."""


def read_text(path: Path, what: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The whole file as text (BOM dropped); raises TextFileError naming `what` and the file."""
    path = Path(path)
    try:
        info = path.stat()
    except OSError as error:
        raise TextFileError(f"cannot read {what} {path}: {error.strerror or error}") from error
    if stat.S_ISDIR(info.st_mode):
        raise TextFileError(f"cannot read {what} {path}: it is a folder, not a file")
    if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
        raise TextFileError(f"cannot read {what} {path}: not a regular file")
    if info.st_size > max_bytes:
        raise TextFileError(f"{what} {path} is {info.st_size} bytes, over the {max_bytes}-byte limit "
                            "for a text list (a wrong file?)")
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as error:
        raise TextFileError(f"cannot read {what} {path}: {error.strerror or error}") from error
    if len(data) > max_bytes:  # grew since stat
        raise TextFileError(f"{what} {path} is over the {max_bytes}-byte limit for a text list")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        offset = error.start
        line = data.count(b"\n", 0, offset) + 1
        column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
        raise TextFileError(f"{path}:{line}: {what} is not valid UTF-8 (byte 0x{data[offset]:02x} "
                            f"at column {column})") from None
    nul = text.find("\0")
    if nul >= 0:
        raise TextFileError(f"{path}:{text.count(chr(10), 0, nul) + 1}: {what} contains a NUL byte "
                            "(a binary file, or UTF-16 text?)")
    return text


def read_text_lines(path: Path, what: str, max_bytes: int = MAX_TEXT_BYTES) -> list[tuple[int, str]]:
    """(1-based line number, stripped line) of the non-empty lines not starting with '#'.

    `what` names the list in messages, e.g. "image list" or "pairs file"; errors read
    "path:line: image list is not valid UTF-8 (...)" or "cannot read image list path: reason"."""
    lines = []
    for number, line in enumerate(read_text(path, what, max_bytes).split("\n"), 1):
        line = line.strip(" \t\r\n\v\f")
        if line and not line.startswith("#"):
            lines.append((number, line))
    return lines

