"""HDF5 files as d2_sfm reads and writes them: opened read-only with one clear error, external
links refused, written through a locked `.partial` copy that replaces the file atomically."""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Iterator

import h5py

from ..atomic import partial_path, real_output
from ..errors import D2SfmError
from ..locking import output_lock

logger = logging.getLogger(__name__)

H5_SUFFIXES = (".h5", ".hdf5")  # accepted for features and matches outputs
H5File = h5py.File  # an open HDF5 file, for the type hints of modules that hold one open


class H5FormatError(D2SfmError, ValueError):
    """An HDF5 file that is not in the expected hloc layout."""


def names_to_pair(name0: str, name1: str, separator: str = "/") -> str:
    """hloc's pair key: slashes in names become dashes, the two names are joined by `separator`."""
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def names_to_pair_old(name0: str, name1: str) -> str:
    return names_to_pair(name0, name1, separator="_")


def open_h5(path: Path, what: str = "HDF5 file") -> h5py.File:
    """Open `path` read-only; a missing, truncated or non-HDF5 file is one H5FormatError line."""
    path = Path(path)
    if not path.is_file():
        raise H5FormatError(f"{what} {path} does not exist" if not path.exists() else f"{what} {path} is not a file")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:  # h5py: "file signature not found", "truncated file", ...
        raise H5FormatError(f"{what} {path} is not a readable HDF5 file ({error_reason(error)}); "
                            "is it truncated, or another format?") from None
    links = external_links(path, handle)
    if links:
        handle.close()
        raise H5FormatError(f"{what} {path} links to other files ({', '.join(links[:3])}): refused, a data file "
                            "may not make d2_sfm read files it names")
    return handle


def external_links(path: Path, handle: h5py.File) -> list[str]:
    """Names of the HDF5 external links in an open file: h5py would follow them to whatever file
    they name. The scan (about 1.7 s for 7,000 images) is done once per file version."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _EXTERNAL_LINKS:
        found: list[str] = []
        handle.visititems_links(lambda name, link: found.append(name) if isinstance(link, h5py.ExternalLink)
                                else None)
        _EXTERNAL_LINKS[key] = found
    return _EXTERNAL_LINKS[key]


_EXTERNAL_LINKS: dict[tuple[str, int, int], list[str]] = {}  # file version -> its external links


def error_reason(error: BaseException) -> str:
    """h5py's long messages cut to their informative part, on one line."""
    text = " ".join(str(error).split())
    return text.split("(", 1)[0].strip() or type(error).__name__


def list_h5_names(path: Path) -> list[str]:
    """Names of all groups that hold datasets (image names, or pair keys in a matches file)."""
    names: set[str] = set()

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            names.add(name.rsplit("/", 1)[0])

    with open_h5(path) as f:
        f.visititems(visit)
    return sorted(names)


@contextlib.contextmanager
def opened_file(source: Path | h5py.File) -> Iterator[h5py.File]:
    """An open file as is, or a path opened read-only for the duration."""
    if isinstance(source, h5py.File):
        yield source
    else:
        with open_h5(source) as f:
            yield f


def is_readable(path: Path) -> bool:
    try:
        with h5py.File(path, "r") as f:
            f.visit(lambda _: None)
        return True
    except Exception:  # h5py raises OSError, KeyError, RuntimeError on damaged files
        return False


def discard_unreadable_partial(path: Path) -> None:
    """A `.partial` cut by a kill mid-write is removed with a warning (its items are redone)."""
    partial = partial_path(path)
    if partial.exists() and not is_readable(partial):
        logger.warning("Discarding %s: left unreadable by an interrupted run; its items are redone", partial)
        partial.unlink()


def current_file(path: Path) -> Path | None:
    """The file a resume continues from: a readable `.partial`, else `path`, else None."""
    discard_unreadable_partial(path)
    for candidate in (partial_path(path), Path(path)):
        if candidate.exists():
            return candidate
    return None


def remove_h5_output(path: Path) -> None:
    """Delete an output and its `.partial` (for --overwrite, after the inputs were validated)."""
    for stale in (real_output(path), partial_path(path)):  # through a link: the file it names
        stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_h5(path: Path, fresh: bool = False) -> Iterator[h5py.File]:
    """Open `path` for appending through `<path>.partial`; replace `path` atomically at the end.

    `fresh`: start from an empty file instead of the existing items (they are all being redone).
    On an exception other than KeyboardInterrupt the partial file is kept for resuming but the
    original stays untouched; on Ctrl-C the progress so far is committed. Holds the output's lock.
    """
    path = real_output(path)
    partial = partial_path(path)
    with output_lock(path):
        if fresh:
            partial.unlink(missing_ok=True)
        discard_unreadable_partial(path)
        if not partial.exists():
            if path.exists() and not fresh:
                if not is_readable(path):
                    raise H5FormatError(f"{path} is not a readable HDF5 file; remove it or use another output")
                shutil.copyfile(path, partial)
            path.parent.mkdir(parents=True, exist_ok=True)
        committed = False
        # Default libver: "latest" marks files as open-for-write, making a killed run's file unreadable.
        handle = h5py.File(partial, "a")
        try:
            yield handle
            committed = True
        except KeyboardInterrupt:
            committed = True
            raise
        finally:
            handle.close()
            if committed:
                os.replace(partial, path)


def is_empty(path: Path) -> bool:
    """Whether the (resumable) output holds nothing yet: no file, or a file without any group
    (e.g. one cut by a kill before its first item). Reads only the top level."""
    current = current_file(path)
    if current is None:
        return True
    with open_h5(current) as f:
        return len(f) == 0


def existing_names(path: Path) -> set[str]:
    """Names already present in `path` or in its resumable `.partial` file."""
    current = current_file(path)
    return set(list_h5_names(current)) if current else set()




def read_file_attributes(path: Path, what: str = "HDF5 file") -> dict[str, str]:
    """The file-level attributes of a finished file (e.g. a features file's weights and extraction
    settings), as text."""
    with open_h5(path, what) as f:
        return {key: str(value) for key, value in f.attrs.items()}


def file_attributes(path: Path) -> dict[str, object]:
    """The file-level attributes of the (resumable) output, {} when there is none yet."""
    current = current_file(path)
    if current is None:
        return {}
    with open_h5(current) as f:
        return dict(f.attrs)

