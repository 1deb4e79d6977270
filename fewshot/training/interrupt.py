"""Graceful stop for long loops: the first Ctrl-C (SIGINT) or SIGTERM asks the loop to stop at its next safe point.

The training loop checks the request between steps, saves ``checkpoints/last.pt`` and exits, so a run stopped
by Ctrl-C, by ``kill`` (SIGTERM) or by a batch scheduler ending a job can be resumed exactly. A second signal
raises ``KeyboardInterrupt`` at once (nothing is saved then, because the state may be in the middle of an
update).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["STOP_SIGNALS", "stop_on_signals"]

#: The signals that ask for a graceful stop.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_on_signals(
    message: str = "stopping at the next safe point (Ctrl-C again to abort now)",
) -> Iterator[threading.Event]:
    """Inside the block the first SIGINT or SIGTERM sets the yielded event (and writes the signal and ``message``
    to stderr).

    Outside the main thread signals cannot be caught; the event is then never set and the signals behave as
    usual. The previous handlers are restored on exit.

    Example:
        >>> with stop_on_signals() as stop:
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
        sys.stderr.write(f"\n{signal.Signals(signum).name}: {message}\n")

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
