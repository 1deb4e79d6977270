"""``load_run``: a trained run folder (from ``runs/`` or archived under ``results/runs/``) as a usable model.

This is :func:`fewshot.training.run_dir.load_run`, the loader ``eval`` uses (config rebuilt from
``config.yaml``, weights from ``checkpoints/best.pt`` through the checked checkpoint reader), so
``predict``, ``embed`` and ``export`` see exactly the model that produced a run's numbers.
"""

from __future__ import annotations

from pathlib import Path

from fewshot.errors import DataError
from fewshot.training.run_dir import LoadedRun
from fewshot.training.run_dir import load_run as _load_run

__all__ = ["RunLike", "LoadedRun", "load_run", "as_loaded_run"]

RunLike = str | Path | LoadedRun


def load_run(path: str | Path, checkpoint: str = "best", device: str | None = None) -> LoadedRun:
    """Load a run folder: its config and the learner with the weights of ``checkpoints/<checkpoint>.pt``.

    Args:
        path: ``runs/<name>/<time>-<sha>/`` or an archived ``results/runs/<name>/<time>-<sha>/``.
        checkpoint: ``"best"`` (the evaluated weights; falls back to ``last``) or ``"last"``.
        device: where the learner runs (``auto | cpu | cuda | cuda:N``); ``None``: ``--device`` of the command,
            else ``auto`` (the first CUDA device if any). ``predict`` and ``embed`` move their inputs there.

    Returns:
        A :class:`~fewshot.training.run_dir.LoadedRun` (``.learner``, ``.cfg``, ``.image_shape``, ``.run_dir``).

    Raises:
        DataError: ``path`` is not a run folder, or it holds no readable checkpoint.
    """
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise DataError(
            f"{str(path)!r} is not a run folder: it has no config.yaml; pass runs/<name>/<time>-<sha>/ written by "
            "`run_episode.py train`, or an archived results/runs/<name>/<time>-<sha>/"
        )
    return _load_run(path, checkpoint=checkpoint, device=device)


def as_loaded_run(run: RunLike, device: str | None = None) -> LoadedRun:
    """``run`` itself if already loaded, else :func:`load_run` of the folder (on ``device``)."""
    return run if isinstance(run, LoadedRun) else load_run(run, device=device)
