"""fewshot/training/file_lock.py: the flock-based run lock shared by the trainer and the sweep."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from fewshot.errors import ConfigError
from fewshot.training import file_lock
from fewshot.training.file_lock import LockOwner, hold_lock, lock_owner


def test_a_held_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    path = tmp_path / "run.lock"
    with hold_lock(path, lambda owner: f"busy: {owner}"):
        owner = lock_owner(path)
        assert (owner.pid, owner.host) == (str(os.getpid()), socket.gethostname())
        with pytest.raises(ConfigError, match=rf"^busy: pid {os.getpid()} on {socket.gethostname()} since 20"):
            with hold_lock(path, lambda owner: f"busy: {owner}"):
                pass
    assert lock_owner(path) is None and path.exists()  # released; the file stays unless remove=True
    with hold_lock(path, str, remove=True):
        pass
    assert not path.exists()


def test_the_lock_of_a_killed_process_is_free_at_once(tmp_path):
    path = tmp_path / "run.lock"
    code = (
        "import sys, time\nfrom fewshot.training.file_lock import hold_lock\n"
        "with hold_lock(sys.argv[1], str):\n    print('held', flush=True)\n    time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "held\n"
        assert lock_owner(path).pid == str(child.pid)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert path.read_text().split()[0] == str(child.pid)  # its record stays, but nobody holds the lock
    assert lock_owner(path) is None
    with hold_lock(path, str):
        assert lock_owner(path).pid == str(os.getpid())


def test_a_lock_on_a_file_deleted_under_it_is_retaken_on_the_new_file(tmp_path, monkeypatch):
    """The holder with ``remove=True`` deletes the file between the next process's open and its flock: that
    process must not keep a lock on the deleted file (a third process could lock the new file at once)."""
    path = tmp_path / "run.lock"
    real_flock = file_lock.fcntl.flock
    first = hold_lock(path, str, remove=True)
    first.__enter__()
    calls = []

    def flock(fd, op):
        calls.append(op)
        if len(calls) == 1:
            first.__exit__(None, None, None)  # released and deleted after our open
        return real_flock(fd, op)

    monkeypatch.setattr(file_lock.fcntl, "flock", flock)
    with hold_lock(path, str):
        assert len(calls) == 2  # the first flock succeeded on the deleted file, so it opened the path again
        assert path.exists() and lock_owner(path).pid == str(os.getpid())


def test_an_owner_line_that_is_short_or_empty_still_parses():
    assert LockOwner.parse("") == LockOwner("unknown", "unknown", "unknown")
    assert str(LockOwner.parse("12 host")) == "pid 12 on host since unknown"
