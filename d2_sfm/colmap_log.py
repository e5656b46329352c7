"""COLMAP's own (glog) messages into one file per output, with the process-wide state restored.

pycolmap's glog is configured process-wide (destination, stderr flags), so a step that redirects it
must put it back: `with colmap_log_to(path) as log:` sends COLMAP's messages to `path` for the
block and restores the previous destination and flags on exit, nesting included.

glog never writes the file it is given: `set_log_destination(INFO, base)` makes it write
`base<yyyymmdd-hhmmss>.<pid>`, and it cannot open that name twice in one second (a second run in
the same process would lose its messages). So each activation gets a fresh piece name beside
`path`, and when glog is pointed elsewhere (exit, or a nested block) the piece is appended to
`path` and removed. Error messages name `log.path`, which is exactly the file that holds the
messages once the block is left (exceptions leave it before the CLI prints them). Pieces left by
a killed process are merged by the next activation for the same file.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .colmap import pycolmap

logger = logging.getLogger(__name__)

FLAGS = ("logtostderr", "alsologtostderr", "stderrthreshold", "minloglevel")
PIECE_MARK = ".piece-"
_counter = itertools.count()


@dataclass
class ColmapLog:
    """An active redirection: `path` is the file COLMAP's messages end up in."""

    path: Path
    base: str = ""  # glog's base name of the current piece
    pieces: list[Path] = field(default_factory=list)


_stack: list[ColmapLog] = []


def piece_pattern(path: Path) -> re.Pattern[str]:
    """Names glog gives the pieces of `path`: <name>.piece-<pid>-<n>-<yyyymmdd-hhmmss>.<pid>."""
    return re.compile(re.escape(path.name + PIECE_MARK) + r"(\d+)-\d+-\d{8}-\d{6}\.(\d+)")


def _point_glog_at(log: ColmapLog | None) -> None:
    """Send INFO (and above) to a fresh piece of `log`, or to no file at all for None."""
    if log is None:
        pycolmap.logging.set_log_destination(pycolmap.logging.INFO, "")
        return
    log.base = str(log.path.with_name(f"{log.path.name}{PIECE_MARK}{os.getpid()}-{next(_counter)}-"))
    pycolmap.logging.set_log_destination(pycolmap.logging.INFO, log.base)


def _merge_pieces(log: ColmapLog, own_only: bool = True) -> None:
    """Append glog's pieces of `log.path` to it and delete them (glog must no longer write them).

    own_only=False also takes pieces of processes that no longer run (killed runs)."""
    pattern = piece_pattern(log.path)
    try:
        candidates = sorted(log.path.parent.iterdir(), key=lambda p: p.name)
    except OSError:
        return
    for piece in candidates:
        match = pattern.fullmatch(piece.name)
        if match is None:
            continue
        pid = int(match.group(2))
        if (pid == os.getpid() and piece.name.startswith(Path(log.base).name)) or \
                (not own_only and pid != os.getpid() and not _alive(pid)):
            _append(piece, log.path)


def _append(piece: Path, target: Path) -> None:
    try:
        data = piece.read_bytes()
        with open(target, "ab") as out:
            out.write(data)
        piece.unlink()
    except OSError as error:
        logger.warning("Could not merge COLMAP's log piece %s into %s: %s", piece, target, error)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def colmap_log_to(path: Path, stderr_threshold: int = 2) -> Iterator[ColmapLog]:
    """COLMAP's messages go to `path` in the block; only those of severity >= stderr_threshold
    (2: errors) still reach the terminal. Everything is restored on exit."""
    log = ColmapLog(Path(path).absolute())
    log.path.parent.mkdir(parents=True, exist_ok=True)
    log.path.touch()
    saved = {flag: getattr(pycolmap.logging, flag) for flag in FLAGS}
    outer = _stack[-1] if _stack else None
    if outer is not None:  # leave the outer piece complete before writing elsewhere
        _point_glog_at(None)
        _merge_pieces(outer)
    _merge_pieces(log, own_only=False)  # pieces of killed runs
    _stack.append(log)
    _point_glog_at(log)
    pycolmap.logging.logtostderr = False
    pycolmap.logging.alsologtostderr = False
    pycolmap.logging.stderrthreshold = stderr_threshold
    try:
        yield log
    finally:
        _point_glog_at(None)  # closes the piece
        _merge_pieces(log)
        _stack.pop()
        for flag, value in saved.items():
            setattr(pycolmap.logging, flag, value)
        if outer is not None:
            _point_glog_at(outer)
