"""Graceful Ctrl-C for long loops: the first SIGINT asks the loop to stop at its next safe point.

The training loop checks the event between steps, saves ``checkpoints/last.pt`` and exits, so an interrupted
run can be resumed exactly. A second Ctrl-C raises ``KeyboardInterrupt`` at once (nothing is saved then,
because the state may be in the middle of an update).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["stop_on_sigint"]


@contextlib.contextmanager
def stop_on_sigint(
    message: str = "stopping at the next safe point (Ctrl-C again to abort now)",
) -> Iterator[threading.Event]:
    """Inside the block the first Ctrl-C sets the yielded event (and writes ``message`` to stderr).

    Outside the main thread signals cannot be caught; the event is then never set and Ctrl-C behaves as usual.
    The previous SIGINT handler is restored on exit.

    Example:
        >>> with stop_on_sigint() as stop:
        ...     while not stop.is_set():
        ...         break
    """
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()
        sys.stderr.write(f"\n{message}\n")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
