"""One writer per output: an advisory lock of d2_sfm's own beside each output.

HDF5's own file locking is often disabled on NFS and HPC file systems (HDF5_USE_FILE_LOCKING=FALSE),
and SQLite/COLMAP folders have none that spans a whole step, so two runs writing the same output
would interleave. `output_lock(path)` takes an exclusive `flock` on `<path>.lock` without waiting:
a second process gets `OutputLockedError` at once, naming the output and the holder's pid. The
kernel releases the lock when the holder exits, even on SIGKILL, so a killed run never blocks the next.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from .errors import D2SfmError


class OutputLockedError(D2SfmError, RuntimeError):
    """Another process is writing the same output."""


def lock_path(path: Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def output_lock(path: Path) -> Iterator[None]:
    """Hold the exclusive lock of `path` (a file or folder being written) for the block.

    Re-entrant within one process (a pipeline locks its folder, then its steps lock their files).
    """
    lock = lock_path(Path(os.path.realpath(path)))  # one lock per real file, whatever link names it
    if lock in _held:
        _held[lock] += 1
        try:
            yield
        finally:
            _held[lock] -= 1
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(lock, path)
    _held[lock] = 1
    try:
        yield
    finally:
        del _held[lock]
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


_held: dict[Path, int] = {}  # locks this process holds -> depth (re-entrance)


def _acquire(lock: Path, path: Path) -> int:
    """Open and flock `lock`, retrying when a releasing holder unlinked it under us."""
    for _ in range(100):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise OutputLockedError(f"cannot create the lock file {lock} for {path}: "
                                    f"{error.strerror or error} (is the output folder writable?)") from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise OutputLockedError(f"{path} is being written by another d2_sfm process{holder}; wait for it "
                                    "to finish or choose another output") from None
        if _same_file(fd, lock):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)  # the previous holder removed this lock file while we opened it: try again
    raise OutputLockedError(f"could not lock {path}: its lock file {lock} keeps changing")


def _same_file(fd: int, lock: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(lock))
    except OSError:
        return False


def _read_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""
