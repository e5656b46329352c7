"""Names read from lists and datasets must stay inside their root folder."""
from __future__ import annotations

from pathlib import Path, PurePosixPath

from .errors import D2SfmError


class UnsafePathError(D2SfmError, ValueError):
    """A name that would escape its root folder (absolute, `..`, or a drive)."""


def safe_relative_name(name: str, source: str = "input") -> str:
    """Validate an image name read from `source`; returns it as a normalised POSIX path."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if not name or posix.is_absolute() or ".." in posix.parts or ":" in posix.parts[0]:
        raise UnsafePathError(f"{source}: image name {name!r} must be a relative path inside the image folder")
    return posix.as_posix()


def resolve_inside(root: Path, name: str, source: str = "input") -> Path:
    """root / name for a validated name (a lexical check: symlinked data folders stay usable)."""
    return Path(root) / safe_relative_name(name, source)
