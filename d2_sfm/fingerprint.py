"""Fingerprints of settings and files: what an output was computed from, so a resume redoes
exactly the items whose inputs changed.

- `settings_fingerprint(*parts)`: 16 hex digits of JSON-able settings.
- `file_sha256(path)` / `file_fingerprint(path)`: the content of a (small or one-off) file.
- `FileStamp`: size + modification time + a fast content hash of an input file (an image). A
  stored stamp is compared with the file on disk by size and mtime first (no read), and only when
  those differ by content, so touching a file does not redo it and editing it always does.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

BLOCK = 1 << 20


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in blocks (checkpoints are tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def content_hash(path: Path) -> str:
    """Fast 16-byte BLAKE2b of a file's whole content (hex)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def settings_fingerprint(*parts: object) -> str:
    """16 hex digits identifying JSON-able settings (non-JSON values by their str())."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_fingerprint(path: Path | None) -> str | None:
    """16 hex digits of a file's content; None when there is no such file."""
    return file_sha256(Path(path))[:16] if path and Path(path).is_file() else None


@dataclass(frozen=True)
class FileStamp:
    """What an input file was when an output item was computed from it."""
    size: int
    mtime_ns: int
    digest: str  # content_hash

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        stat = os.stat(path)
        return cls(stat.st_size, stat.st_mtime_ns, content_hash(path))

    def to_text(self) -> str:
        return f"{self.size}:{self.mtime_ns}:{self.digest}"

    @classmethod
    def from_text(cls, text: str) -> FileStamp | None:
        """The stamp stored as text, or None for a missing or malformed one (= unknown origin)."""
        try:
            size, mtime_ns, digest = str(text).split(":")
            return cls(int(size), int(mtime_ns), digest)
        except ValueError:
            return None

    def matches(self, path: Path) -> bool:
        """Whether `path` still has this content (size+mtime equal: yes without reading it)."""
        try:
            stat = os.stat(path)
        except OSError:
            return False
        if stat.st_size != self.size:
            return False
        if stat.st_mtime_ns == self.mtime_ns:
            return True
        return content_hash(path) == self.digest
