"""Names read from lists and datasets must stay inside their root folder, and be safe to write.

Two levels of checks:

- `safe_relative_name` (every name from any source): not empty, relative, no `..`, no drive, no
  control characters (NUL, newline, carriage return, tab, ...) nor Unicode line/paragraph
  separators, which would split a line of a list or pairs file or be cut at NUL by the C libraries.
- `name_problem` (names d2_sfm itself lists from a folder and writes into pairs files): also no
  whitespace at all (hloc splits pairs-file lines on whitespace, so `a b.jpg` becomes two names), no
  backslash (treated as a folder separator when the name is read back from a list), no leading `#`
  (list readers take such a line for a comment) and valid UTF-8 (HDF5 group names and text files).

`check_pair_key_collisions` refuses names that hloc's matches-file key (`/` -> `-`) cannot tell
apart, and `check_output_path` checks an output file's extension and folder before any work.
"""
from __future__ import annotations

import os
import unicodedata
from pathlib import Path, PurePosixPath

from .errors import D2SfmError


class UnsafePathError(D2SfmError, ValueError):
    """A name that would escape its root folder (absolute, `..`, or a drive) or holds control characters."""


class NameCollisionError(D2SfmError, ValueError):
    """Two image names that hloc's pair key (`/` -> `-`) maps to the same HDF5 group."""


class OutputPathError(D2SfmError, ValueError):
    """An output path that cannot be written (wrong extension, a folder, a read-only folder)."""


def control_character(name: str) -> str | None:
    """The first character of `name` that would break a text line or a C string, shown escaped."""
    for char in name:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            return repr(char)[1:-1]
    return None


def safe_relative_name(name: str, source: str = "input") -> str:
    """Validate an image name read from `source`; returns it as a normalised POSIX path.

    Backslashes are read as folder separators (lists written on Windows)."""
    bad = control_character(name)
    if bad:
        raise UnsafePathError(f"{source}: image name {name!r} contains the control character {bad}")
    posix = PurePosixPath(name.replace("\\", "/"))
    if not name or posix.is_absolute() or ".." in posix.parts or ":" in posix.parts[0]:
        raise UnsafePathError(f"{source}: image name {name!r} must be a relative path inside the image folder")
    return posix.as_posix()


def resolve_inside(root: Path, name: str, source: str = "input") -> Path:
    """root / name for a validated name (a lexical check: symlinked data folders stay usable)."""
    return Path(root) / safe_relative_name(name, source)


def name_problem(name: str) -> str | None:
    """Why `name` (a POSIX path relative to the image folder) cannot go into hloc pairs files and
    HDF5 files unchanged, or None if it can. Used to skip such files when listing a folder."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "the name is not valid UTF-8"
    bad = control_character(name)
    if bad:
        return f"the name contains the control character {bad}"
    if any(char.isspace() for char in name):
        return "the name contains whitespace, which hloc's pairs files use as the separator"
    if "\\" in name:
        return "the name contains a backslash, which image lists read as a folder separator"
    if name.startswith("#"):
        return "the name starts with '#', which list files read as a comment"
    return None


def check_pair_key_collisions(names: list[str], source: str) -> None:
    """Refuse names that hloc's pair key cannot tell apart: `sub/k.jpg` and `sub-k.jpg` both become
    `sub-k.jpg` in a matches file, so the matches of one would silently serve the other."""
    seen: dict[str, str] = {}
    for name in names:
        key = name.replace("/", "-")
        other = seen.setdefault(key, name)
        if other != name:
            raise NameCollisionError(
                f"{source}: image names {other!r} and {name!r} both become {key!r} in hloc's matches "
                "file (it turns '/' into '-'); rename one of them")


def check_output_path(path: Path, suffixes: tuple[str, ...], what: str) -> Path:
    """Check an output file before any work: a known extension (case-insensitive), not a folder,
    and its folder (or the nearest existing one above, since outputs create their folders)
    writable. Returns the path. The write itself can still fail (disk full), with one line."""
    path = Path(path)
    accepted = tuple(s.lower() for s in suffixes)
    if path.suffix.lower() not in accepted:
        raise OutputPathError(f"{what} {path}: unknown extension {path.suffix or '(none)'!r}; "
                              f"use {' or '.join(accepted)}")
    if path.is_dir():
        raise OutputPathError(f"{what} {path} is a folder; give a file name ending in {accepted[0]}")
    if path.exists() and not path.is_file():
        raise OutputPathError(f"{what} {path} exists and is not a regular file")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        if folder.is_symlink():
            raise OutputPathError(f"{what} {path}: {folder} is a dangling symbolic link")
        folder = folder.parent
    if not folder.is_dir():
        raise OutputPathError(f"{what} {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {path}: folder {folder} is not writable")
    return path
