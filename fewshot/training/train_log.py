"""``train_log.csv``: one row every ``train.log_every`` episodes and at every validation.

Columns: ``episode`` (training episodes done), ``loss`` and ``acc`` (means over the episodes since the previous
row), ``lr`` (learning rate of the last step), ``elapsed_s`` (training seconds so far), ``val_acc`` (mean
validation accuracy, empty except on validation rows). Rows are appended and flushed one by one; on resume the
rows written after the checkpoint's episode are dropped, so the log always matches the resumed state.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from episodes.cache import atomic_write_bytes

__all__ = ["LOG_COLUMNS", "TrainLog"]

LOG_COLUMNS = ("episode", "loss", "acc", "lr", "elapsed_s", "val_acc")


def _fmt(value: float | None, digits: int = 6) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}g}"


class TrainLog:
    """Appends rows to ``<run>/train_log.csv``.

    Args:
        path: the CSV file.
        resume_episode: ``None`` for a new run (the file is created with its header; it must not exist);
            else the checkpoint's episode: rows with a larger ``episode`` are removed (atomically).
    """

    def __init__(self, path: str | Path, resume_episode: int | None = None) -> None:
        self.path = Path(path)
        if resume_episode is None:
            with self.path.open("x", newline="", encoding="utf-8") as f:
                csv.writer(f).writerow(LOG_COLUMNS)
        else:
            self._truncate_after(resume_episode)
        self._file = self.path.open("a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)

    def _truncate_after(self, episode: int) -> None:
        if not self.path.is_file():
            with self.path.open("w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerow(LOG_COLUMNS)
            return
        with self.path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        kept = [LOG_COLUMNS] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= episode]
        text = io.StringIO(newline="")
        csv.writer(text).writerows(kept)
        atomic_write_bytes(self.path, text.getvalue().encode("utf-8"))

    def write(
        self, episode: int, loss: float | None, acc: float | None, lr: float, elapsed_s: float, val_acc: float | None
    ) -> None:
        """Append one row and flush it."""
        self._writer.writerow([episode, _fmt(loss, 8), _fmt(acc, 8), _fmt(lr, 8), f"{elapsed_s:.2f}", _fmt(val_acc, 8)])
        self._file.flush()

    def close(self) -> None:
        """Close the file (rows already written are flushed)."""
        self._file.close()
