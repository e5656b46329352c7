"""Short fingerprints of settings and files, for deciding whether a finished step can be reused."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in blocks (checkpoints are tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def settings_fingerprint(*parts: object) -> str:
    """16 hex digits identifying JSON-able settings (non-JSON values by their str())."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_fingerprint(path: Path | None) -> str | None:
    """16 hex digits of a file's content; None when there is no such file."""
    return file_sha256(Path(path))[:16] if path and Path(path).is_file() else None
