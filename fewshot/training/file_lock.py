"""Exclusive per-run locks on a file (``flock``), shared by the trainer and the sweep.

A lock is an exclusive, non-blocking ``flock`` on a small file that records its owner (``pid host started``,
one line). The operating system releases a ``flock`` when its process ends, however it ends (Ctrl-C,
SIGKILL, a crash), so a lock left behind by a dead process is stale by construction and the next process
simply takes it: no pid probing, no clean-up by hand. Used for ``<run>/.lock`` (the process training a run,
:func:`fewshot.training.run_dir.run_lock`) and ``<run>.lock`` beside a sweep's run folder (the sweep process
training and then evaluating it, :func:`fewshot.study.status.run_lock`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from fewshot.errors import ConfigError

__all__ = ["LockOwner", "hold_lock", "lock_owner"]


@dataclass(frozen=True)
class LockOwner:
    """Who holds a lock: process id, host name and the UTC time it was taken (ISO 8601, seconds)."""

    pid: str
    host: str
    started: str

    @classmethod
    def parse(cls, text: str) -> LockOwner:
        fields = text.split()
        return cls(*(fields + ["unknown"] * 3)[:3])

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host} since {self.started}"


def _busy(err: OSError) -> bool:
    return err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)


@contextmanager
def hold_lock(path: str | Path, busy: Callable[[LockOwner], str], *, remove: bool = False) -> Iterator[Path]:
    """Hold the exclusive lock on ``path`` inside the block; ``busy(owner)`` words the error when it is taken.

    With ``remove``, the file is deleted on release (a lock beside a folder leaves nothing behind); a process
    that opened the file just before it was deleted notices that its lock is on a deleted file and tries again,
    so two processes never both hold it.

    Raises:
        ConfigError: another live process holds the lock (``busy``'s message).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            owner = os.pread(fd, 200, 0).decode("utf-8", "replace")
            os.close(fd)
            if not _busy(exc):
                raise
            raise ConfigError(busy(LockOwner.parse(owner))) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder deleted the file between our open and our flock: lock the new one
    try:
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()} {started}\n".encode(), 0)
        yield path
    finally:
        if remove:
            path.unlink(missing_ok=True)  # before the release, so no one locks a file about to vanish
        os.close(fd)  # releases the flock


def lock_owner(path: str | Path) -> LockOwner | None:
    """The owner of the lock on ``path`` if a live process holds it, else ``None``; never takes the lock."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if not _busy(exc):
                raise
            return LockOwner.parse(os.pread(fd, 200, 0).decode("utf-8", "replace"))
        return None
    finally:
        os.close(fd)  # also releases the shared lock just taken
