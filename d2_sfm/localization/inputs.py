"""What localization outputs were computed from: content digests of dataset files and images.

A resume must redo exactly what changed (a query image edited after a finished run, a new
reference model), so every step's record holds digests of its inputs. Hashing a whole dataset on
every run would cost minutes, so `StampCache` keeps each file's `FileStamp` in the output folder
and re-reads a file only when its size or modification time changed (touching a file costs one
hash and redoes nothing; editing it changes its digest). Very large per-cutout scans (InLoc
XYZcut, ~46 MB each) are stamped by size and modification time only (`stat_stamp`).

`ImageChecks` answers, before anything is computed, whether each input image can be read (its
header, as `d2_sfm.image_headers` parses it), remembered the same way: an unreadable image is a
counted skip, not an error after hours of extraction, and a resume reads no image again.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..atomic import write_json
from ..fingerprint import FileStamp
from ..image_headers import ImageError, ImageHeader, ImageTooLargeError, max_image_pixels, read_image_header

logger = logging.getLogger(__name__)


def read_json_object(path: Path) -> dict:
    """The JSON object in `path`; empty when the file is missing or damaged (a cache, not an input)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class JsonCache:
    """{file: what is remembered about it} kept between runs in one JSON file of the output folder:
    read once (missing or damaged: empty, so everything is worked out once more), written by
    `save` only when an entry changed."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries = read_json_object(self.path)
        self.dirty = False

    def _remember(self, key: str, entry: object) -> None:
        if self.entries.get(key) != entry:
            self.entries[key] = entry
            self.dirty = True

    def save(self) -> None:
        if self.dirty:
            write_json(self.path, self.entries)
            self.dirty = False


class StampCache(JsonCache):
    """{file: FileStamp} remembered between runs."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.entries = {str(k): str(v) for k, v in self.entries.items()}

    def digest(self, path: Path) -> str:
        """Content digest of `path` ("missing" when it is not a file); hashed only when its size
        or modification time differ from the remembered stamp."""
        key = str(Path(path).absolute())
        try:
            stat = os.stat(path)
        except OSError:
            return "missing"
        stored = FileStamp.from_text(self.entries.get(key, ""))
        if stored is not None and stored.size == stat.st_size and stored.mtime_ns == stat.st_mtime_ns:
            return stored.digest
        try:
            stamp = FileStamp.of(Path(path))
        except OSError:  # e.g. no permission: an unreadable image is a counted skip, not a traceback
            return f"unreadable {stat.st_size}:{stat.st_mtime_ns}"
        self._remember(key, stamp.to_text())
        return stamp.digest

    def digests(self, paths: list[Path], root: Path) -> dict[str, str]:
        """{path relative to root: digest} of several files."""
        return {Path(p).relative_to(root).as_posix() if Path(p).is_relative_to(root) else str(p): self.digest(p)
                for p in paths}

def stat_stamp(path: Path) -> str:
    """`size:mtime_ns` of a file too large to hash on every run; "missing" when absent."""
    try:
        stat = os.stat(path)
    except OSError:
        return "missing"
    return stat_text(stat)


def stat_text(stat: os.stat_result) -> str:
    return f"{stat.st_size}:{stat.st_mtime_ns}"


class ImageChecks(JsonCache):
    """Whether each input image is readable, by its header (`read_image_header`), remembered
    between runs in one JSON file of the output folder: {file: {"stat": size:mtime_ns, and "size":
    [W, H] or "problem": why it cannot be used}}. A file is read again only when its size or
    modification time changed, so a resume reads no image and reports the same skips, and a
    replaced image is checked (and used) again.

    Problems that may pass without the file changing (an OS error such as no permission, the
    pixel limit of D2_SFM_MAX_IMAGE_PIXELS) are not remembered: they are checked on every run."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.entries = {str(k): v for k, v in self.entries.items() if isinstance(v, dict)}

    def check(self, path: Path) -> ImageHeader | str:
        """The image's header, or why it cannot be used (one line naming the file)."""
        key = str(Path(path).absolute())
        try:
            stat = os.stat(path)
        except OSError as error:
            return f"image {path} cannot be read: {error.strerror or error}"
        current = stat_text(stat)
        entry = self.entries.get(key, {})
        if entry.get("stat") == current:
            remembered = self._remembered(entry)
            if remembered is not None:
                return remembered
        try:
            header = read_image_header(Path(path))
        except ImageTooLargeError as error:  # the limit is a setting: asked again next time
            return str(error)
        except ImageError as error:
            if not isinstance(error.__cause__, OSError):
                self._remember(key, {"stat": current, "problem": str(error)})
            return str(error)
        self._remember(key, {"stat": current, "format": header.format, "size": [header.width, header.height]})
        return header

    @staticmethod
    def _remembered(entry: dict) -> ImageHeader | str | None:
        """A remembered answer; None when the entry is damaged or over the current pixel limit."""
        if isinstance(entry.get("problem"), str):
            return entry["problem"]
        size = entry.get("size")
        if isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size) \
                and size[0] * size[1] <= max_image_pixels():
            return ImageHeader(str(entry.get("format", "")), size[0], size[1])
        return None

    def problem(self, path: Path) -> str | None:
        """Why the image cannot be used, None when its header is sound."""
        found = self.check(path)
        return found if isinstance(found, str) else None

    def record_failure(self, path: Path, reason: str, checked: str) -> None:
        """An image whose header was sound but that could not be decoded (extraction failed):
        remembered as unusable while the file stays as it was when checked (`checked`: its
        size:mtime_ns then; a file replaced meanwhile is checked again next run)."""
        if reason.startswith("cannot read image") or "over the limit" in reason:
            return  # an OS error or the pixel limit: may pass without the file changing
        if stat_stamp(path) == checked:  # ("missing" never equals a checked stamp)
            self._remember(str(Path(path).absolute()), {"stat": checked, "problem": reason})

    def stat_of(self, path: Path) -> str | None:
        """size:mtime_ns of the file as last checked, None when unknown."""
        entry = self.entries.get(str(Path(path).absolute()))
        return entry.get("stat") if entry else None
