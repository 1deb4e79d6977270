"""Classify a user's images with a trained run: a labelled support set in, class probabilities per query out.

The support set and the queries form one episode (labels in sorted class-name order, as every episode), scored
by the run's learner exactly as in evaluation: ProtoNet compares query embeddings with the class means of the
support embeddings (Snell et al. 2017); MAML adapts on the support set with its test-time inner steps
(``eval_inner_steps`` at ``eval_inner_lr``, Finn et al. 2017) and scores the queries with the adapted network.
Under the ``transductive`` policy the norm statistics come from the images being scored, so a query's
probabilities depend on the other queries; ``running`` and ``support`` score every query on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from episodes.episode import Episode
from fewshot.device import model_device
from fewshot.errors import ConfigError
from fewshot.evaluation.evaluate import check_policy
from fewshot.inference.images import class_folders, image_files, load_images
from fewshot.inference.run import RunLike, as_loaded_run

__all__ = ["Predictions", "predict"]


@dataclass(frozen=True)
class Predictions:
    """Class probabilities of each query image.

    Attributes:
        files: the query files, in row order.
        folders: each query's sub-folder (``""`` if none; e.g. the true class of a held-out image).
        classes: the support classes, sorted; column ``j`` of ``probabilities`` is ``classes[j]``.
        probabilities: float64 ``(n_queries, n_classes)``, rows sum to 1 (softmax of the learner's logits).
        policy: the test-time norm policy used.
    """

    files: tuple[str, ...]
    folders: tuple[str, ...]
    classes: tuple[str, ...]
    probabilities: np.ndarray
    policy: str

    @property
    def labels(self) -> tuple[str, ...]:
        """The predicted class of each query (the most probable; ties go to the first class in sorted order)."""
        return tuple(self.classes[j] for j in self.probabilities.argmax(axis=1).tolist())

    def to_frame(self) -> pd.DataFrame:
        """One row per query: ``file``, ``folder`` (only if any query has one), ``prediction``, ``p_<class>``."""
        frame = pd.DataFrame({"file": list(self.files)})
        if any(self.folders):
            frame["folder"] = list(self.folders)
        frame["prediction"] = list(self.labels)
        for j, name in enumerate(self.classes):
            frame[f"p_{name}"] = self.probabilities[:, j]
        return frame


def predict(
    run: RunLike,
    support: str | Path | Mapping[str, Sequence[str | Path]],
    query: str | Path | Sequence[str | Path],
    *,
    policy: str | None = None,
) -> Predictions:
    """Classify ``query`` images among the classes of ``support`` with a trained run.

    Args:
        run: a run folder (also an archived one under ``results/runs/``) or a loaded run (:func:`load_run`).
        support: a folder with one sub-folder of images per class, or ``{class: [files]}``.
        query: an image file, a list of files, or a folder of images (sub-folders included, see
            :func:`~fewshot.inference.images.image_files`).
        policy: ``running``, ``support`` or ``transductive``; default the run's ``eval.norm_policy``.

    Returns:
        :class:`Predictions`.

    Raises:
        DataError: missing, unreadable or ill-fitting images (named). ConfigError: a bad policy, or a support set
        whose number of classes a MAML run's head cannot take.
    """
    loaded = as_loaded_run(run)
    learner, cfg = loaded.learner, loaded.cfg
    policy = cfg.eval.norm_policy if policy is None else policy
    try:
        check_policy(policy)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    labelled = class_folders(support)
    queries = image_files(query)
    classes = tuple(dict.fromkeys(labelled.folders))
    head = getattr(learner, "n_way", None)  # MAML's output head has a fixed number of classes
    if head is not None and head != len(classes):
        raise ConfigError(
            f"run {str(loaded.run_dir)!r} is a {head}-way {type(learner).__name__} model (its output head has {head} "
            f"classes), but the support set has {len(classes)} ({', '.join(classes)}); give exactly {head} classes"
        )
    index = {c: j for j, c in enumerate(classes)}
    episode = Episode(
        support_x=load_images(labelled.files, cfg, loaded.image_shape),
        support_y=torch.tensor([index[c] for c in labelled.folders], dtype=torch.int64),
        query_x=load_images(queries.files, cfg, loaded.image_shape),
        query_y=torch.zeros(len(queries), dtype=torch.int64),  # unknown; predict never reads them
        class_ids=classes,
        support_ids=tuple(map(str, labelled.files)),
        query_ids=tuple(map(str, queries.files)),
        index=0,
    )
    logits = learner.predict(episode.to(model_device(learner)), policy=policy).cpu()
    return Predictions(
        files=tuple(map(str, queries.files)),
        folders=queries.folders,
        classes=classes,
        probabilities=torch.softmax(logits.double(), dim=1).numpy(),
        policy=policy,
    )
