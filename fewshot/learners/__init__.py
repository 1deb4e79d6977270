"""Few-shot learners and their registry ``LEARNERS``.

Registered names: ``protonet`` (Prototypical Networks) and ``maml`` (MAML / first-order MAML / ANIL, torch.func).
A learner wraps a backbone and exposes ``meta_loss(episodes, *, policy)`` for meta-training and
``predict(episode, *, policy)`` for meta-test (see :class:`fewshot.learners.base.Learner`).

Example:
    >>> from fewshot import backbones, learners
    >>> learner = learners.create("protonet", backbones.create("conv4"))
    >>> type(learner).__name__
    'ProtoNet'
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fewshot.learners import classifier as classifier
from fewshot.learners import maml as maml
from fewshot.learners import protonet as protonet
from fewshot.learners._registry import LEARNERS as LEARNERS
from fewshot.learners.base import Learner as Learner
from fewshot.registry import accepted_options, check_options

__all__ = ["LEARNERS", "Learner", "create", "names"]


def names(pattern: str | None = None) -> list[str]:
    """Sorted registered learner names, optionally filtered by an fnmatch ``pattern``."""
    return LEARNERS.names(pattern)


def create(name: str, backbone: nn.Module, **kwargs: Any) -> Learner:
    """Build the learner registered as ``name`` around ``backbone``.

    Args:
        name: registry name (case-insensitive, ``_``/``-`` ignored): ``"protonet"`` or ``"maml"``.
        backbone: the feature extractor (e.g. from :func:`fewshot.backbones.create`).
        **kwargs: learner options, e.g. ``distance`` for protonet; ``n_way``, ``image_size``, ``inner_lr``,
            ``inner_steps``, ``first_order``, ``anil`` for maml. Every learner accepts ``channels_last``,
            ``n_way``, ``image_size`` and ``in_channels``.

    Raises:
        UnknownNameError: unknown ``name`` (the message lists close matches and all names).
        TypeError: a keyword that is not an option of that learner (the message lists its options).
    """
    cls = LEARNERS.get(name)
    accepted, _ = accepted_options(cls, exclude=("backbone",))
    check_options(kwargs, accepted, owner=f"learner {LEARNERS.canonical(name)!r}")
    return cls(backbone, **kwargs)
